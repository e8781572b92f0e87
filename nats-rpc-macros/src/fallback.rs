//! On any error: the item exactly as written plus the `compile_error!`s. Keeping the fn means
//! code that calls it still type-checks, so the user sees only the real mistake.

use proc_macro2::TokenStream;
use quote::quote;

pub fn render(item: TokenStream, err: syn::Error) -> TokenStream {
    let errors = err.to_compile_error();
    quote! {
        #item
        #errors
    }
}
