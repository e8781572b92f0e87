use nats_rpc::nats_rpc;

pub struct Store;

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct Req {
    pub key: String,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Reply {
    pub ok: bool,
}

// `_` is no type the runtime can decode into or encode from: the macro says so on the `_`.
#[nats_rpc(subject = "kv.get")]
pub async fn get(_store: &Store, _request: Req) -> Result<_, nats_rpc::Error> {
    Ok(Reply { ok: true })
}

fn main() {}
