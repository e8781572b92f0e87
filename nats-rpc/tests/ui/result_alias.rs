use nats_rpc::nats_rpc;

pub struct Store;

type Result<T> = std::result::Result<T, nats_rpc::Error>;

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct Req {
    pub key: String,
}

#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Reply {
    pub ok: bool,
}

#[nats_rpc(subject = "kv.get")]
pub async fn get(_store: &Store, _request: Req) -> Result<Reply> {
    Ok(Reply { ok: true })
}

fn main() {}
