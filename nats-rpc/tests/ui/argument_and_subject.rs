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

// A misspelt argument does not hide the subject's own mistake: both are reported.
#[nats_rpc(subject = "kv.get*", nmae = "get")]
pub async fn get(_store: &Store, _request: Req) -> Result<Reply, nats_rpc::Error> {
    Ok(Reply { ok: true })
}

fn main() {}
