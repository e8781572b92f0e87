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

#[nats_rpc(subject = "kv.get")]
pub async fn get(_store: &Store, _request: Req, _context: nats_rpc::Context<'static>) -> Result<Reply, nats_rpc::Error> {
    Ok(Reply { ok: true })
}

fn main() {}
