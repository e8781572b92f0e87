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

// Several mistakes at once, in the attribute and in the fn: every one is reported in one build.
#[nats_rpc(subjct = "kv.get")]
pub fn get(_store: &mut Store, _request: &Req) -> Reply {
    Reply { ok: true }
}

fn main() {}
