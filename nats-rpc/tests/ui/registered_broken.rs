// A broken handler that is also registered and called: only the handler's own mistake is
// reported, not "expected type, found function" where the endpoint is used.
use nats_rpc::{Client, Service, nats_rpc};

pub struct Store;

#[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
pub struct Req {
    pub key: String,
}

#[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
pub struct Reply {
    pub ok: bool,
}

#[nats_rpc(subject = "kv.get")]
pub fn get(_store: &Store, _request: Req) -> Result<Reply, nats_rpc::Error> {
    Ok(Reply { ok: true })
}

#[allow(dead_code)]
async fn wire(nats: async_nats::Client, client: Client) {
    let _service = Service::builder("kv", "1.0.0")
        .endpoint::<get>()
        .serve(nats, Store)
        .await;
    let _reply: Result<Reply, _> = client
        .call::<get>(&Req { key: "k".into() })
        .await;
}

fn main() {}
