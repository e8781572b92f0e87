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

pub struct Opaque;

#[nats_rpc(subject = "kv.get")]
pub async fn get(_store: &Store, _request: Req) -> Result<Opaque, nats_rpc::Error> {
    Ok(Opaque)
}

fn main() {}
