//! A complete nats-rpc service: one endpoint, logging, served until Ctrl-C.
//!
//! ```sh
//! cargo run -p nats-rpc --example greeter            # NATS at 127.0.0.1:4222, or NATS_URL
//! # another terminal, e.g. with nats-py:
//! python3 -c 'import asyncio, nats
//! async def main():
//!     nc = await nats.connect()
//!     print((await nc.request("demo.hello", b"{\"name\":\"Ada\"}")).data)
//! asyncio.run(main())'
//! # b'{"success":true,"data":{"text":"Hello, Ada!"}}'
//! ```
//!
//! A project of its own needs (schemars must be the major version nats-rpc uses, 1.x, because
//! the request and response types derive its `JsonSchema`):
//!
//! ```toml
//! [dependencies]
//! nats-rpc = "0.2"
//! schemars = "1"
//! serde = { version = "1", features = ["derive"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread", "signal"] }
//! tracing = "0.1"
//! tracing-subscriber = { version = "0.3", features = ["env-filter"] }
//! ```

use nats_rpc::{Service, nats_rpc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize, JsonSchema)]
struct Hello {
    /// Who to greet.
    #[schemars(length(min = 1, max = 50))]
    name: String,
}

#[derive(Serialize, JsonSchema)]
struct Greeting {
    text: String,
}

/// The state every request sees: here, the greeting word.
struct Greeter {
    word: String,
}

#[nats_rpc(subject = "demo.hello")]
async fn hello(greeter: &Greeter, request: Hello) -> Result<Greeting, nats_rpc::Error> {
    Ok(Greeting {
        text: format!("{}, {}!", greeter.word, request.name),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let nats = nats_rpc::connect_options().connect(url.as_str()).await?;
    let service = Service::builder("greeter", "1.0.0")
        .description("says hello")
        .endpoint::<hello>()
        .serve(
            nats,
            Greeter {
                word: "Hello".into(),
            },
        )
        .await?;
    tracing::info!(
        id = service.id(),
        "greeter serving demo.hello; Ctrl-C stops it"
    );
    service
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracing::info!("stopped");
    Ok(())
}
