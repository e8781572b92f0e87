use nats_rpc::nats_rpc;

#[nats_rpc(subject = "kv.get")]
pub struct Get;

fn main() {}
