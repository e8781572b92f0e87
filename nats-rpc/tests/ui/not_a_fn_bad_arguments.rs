use nats_rpc::nats_rpc;

// On an item that is not a fn, the arguments' own mistakes are reported too.
#[nats_rpc(subject = "kv get", nmae = "get")]
pub enum Get {}

fn main() {}
