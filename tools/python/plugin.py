"""A Python plugin as a plugin author would write one: it discovers kv-service with nats-py,
fetches every endpoint's schemas and the AsyncAPI document from the running service itself,
and talks to it through the pydantic v2 models datamodel-code-generator made from schemas/.

    python plugin.py NATS_URL MODELS_DIR

Exits non-zero (an AssertionError naming what differed) when anything is not as documented.
"""

import asyncio
import json
import sys
import time

import jsonschema
import nats

NATS_URL, MODELS = sys.argv[1], sys.argv[2]
sys.path.insert(0, MODELS)

from rosey_db_kv_delete_request import RoseyDbKvDeleteRequest  # noqa: E402
from rosey_db_kv_delete_response import RoseyDbKvDeleteSuccessReply  # noqa: E402
from rosey_db_kv_get_request import RoseyDbKvGetRequest  # noqa: E402
from rosey_db_kv_get_response import RoseyDbKvGetSuccessReply  # noqa: E402
from rosey_db_kv_list_request import RoseyDbKvListRequest  # noqa: E402
from rosey_db_kv_list_response import RoseyDbKvListSuccessReply  # noqa: E402
from rosey_db_kv_set_error import Code, RoseyDbKvSetErrorReply  # noqa: E402
from rosey_db_kv_set_request import RoseyDbKvSetRequest  # noqa: E402
from rosey_db_kv_set_response import RoseyDbKvSetSuccessReply  # noqa: E402

PLUGIN = "py-plugin"


async def discover(nc):
    """Every kv-service instance's $SRV.INFO reply (`nats micro info kv-service`)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish("$SRV.INFO.kv-service", b"", reply=inbox)
    replies = []
    deadline = time.monotonic() + 0.5
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except nats.errors.TimeoutError:
            break
        if msg.data:  # an empty one is the server's "no responders" (nobody serves it yet)
            replies.append(json.loads(msg.data))
    await sub.unsubscribe()
    return replies


async def main():
    nc = await nats.connect(NATS_URL)
    instances = []
    for _ in range(40):  # the service may still be starting
        if instances := await discover(nc):
            break
    assert len(instances) == 1, instances
    info = instances[0]
    assert info["type"] == "io.nats.micro.v1.info_response" and info["name"] == "kv-service"
    endpoints = {endpoint["subject"]: endpoint for endpoint in info["endpoints"]}
    assert {"rosey.db.kv.set", "rosey.db.kv.get", "rosey.db.kv.delete", "rosey.db.kv.list"} <= set(endpoints)
    # Each endpoint's schemas, fetched in-band, compiled as the JSON Schema 2020-12 they declare.
    schemas = {}
    for subject, endpoint in endpoints.items():
        for kind in ("request", "response", "error"):
            schema = json.loads(endpoint["metadata"][f"{kind}_schema"])
            jsonschema.Draft202012Validator.check_schema(schema)
            schemas[subject, kind] = jsonschema.Draft202012Validator(schema)
    document = json.loads((await nc.request(info["metadata"]["asyncapi_subject"], b"", timeout=2)).data)
    assert document["asyncapi"] == "3.0.0"
    assert sorted(document["operations"]) == sorted(endpoint["name"] for endpoint in info["endpoints"])

    async def call(op, request, reply_model=None):
        """Sends a model (checked against the fetched request schema first) or a raw dict."""
        subject = f"rosey.db.kv.{op}"
        if hasattr(request, "model_dump_json"):
            body = request.model_dump_json(exclude_unset=True)
            schemas[subject, "request"].validate(json.loads(body))
        else:
            body = json.dumps(request)
        msg = await nc.request(subject, body.encode(), timeout=2)
        reply = json.loads(msg.data)
        schemas[subject, "response" if reply["success"] else "error"].validate(reply)
        return msg, reply, (reply_model.model_validate_json(msg.data) if reply_model else None)

    # set / get, a stored null, absent vs null.
    _, reply, ok = await call("set", RoseyDbKvSetRequest(plugin_name=PLUGIN, key="config", value={"theme": "dark"}), RoseyDbKvSetSuccessReply)
    assert ok.success is True and reply == {"success": True, "data": {}}, reply
    await call("set", RoseyDbKvSetRequest(plugin_name=PLUGIN, key="nothing", value=None), RoseyDbKvSetSuccessReply)
    _, _, got = await call("get", RoseyDbKvGetRequest(plugin_name=PLUGIN, key="config"), RoseyDbKvGetSuccessReply)
    assert got.data.exists and got.data.value == {"theme": "dark"}, got
    _, reply, stored_null = await call("get", RoseyDbKvGetRequest(plugin_name=PLUGIN, key="nothing"), RoseyDbKvGetSuccessReply)
    assert reply["data"] == {"exists": True, "value": None}, reply
    assert stored_null.data.exists and "value" in stored_null.data.model_fields_set and stored_null.data.value is None
    _, reply, missing = await call("get", RoseyDbKvGetRequest(plugin_name=PLUGIN, key="missing"), RoseyDbKvGetSuccessReply)
    assert reply["data"] == {"exists": False}, reply
    assert not missing.data.exists and "value" not in missing.data.model_fields_set

    # A TTL: live, then gone.
    await call("set", RoseyDbKvSetRequest(plugin_name=PLUGIN, key="session", value=42, ttl_seconds=1), RoseyDbKvSetSuccessReply)
    _, _, live = await call("get", RoseyDbKvGetRequest(plugin_name=PLUGIN, key="session"), RoseyDbKvGetSuccessReply)
    assert live.data.exists and live.data.value == 42
    await asyncio.sleep(1.2)
    _, _, gone = await call("get", RoseyDbKvGetRequest(plugin_name=PLUGIN, key="session"), RoseyDbKvGetSuccessReply)
    assert not gone.data.exists

    # list and delete.
    _, _, listed = await call("list", RoseyDbKvListRequest(plugin_name=PLUGIN, prefix="", limit=10), RoseyDbKvListSuccessReply)
    assert listed.data.keys == ["config", "nothing"] and listed.data.count == 2 and not listed.data.truncated, listed
    _, _, deleted = await call("delete", RoseyDbKvDeleteRequest(plugin_name=PLUGIN, key="config"), RoseyDbKvDeleteSuccessReply)
    assert deleted.data.deleted is True
    _, _, again = await call("delete", RoseyDbKvDeleteRequest(plugin_name=PLUGIN, key="config"), RoseyDbKvDeleteSuccessReply)
    assert again.data.deleted is False

    # An error reply, parsed into its model, with the ADR-32 headers.
    msg, reply, _ = await call("set", {"plugin_name": PLUGIN, "key": "", "value": 1})
    error = RoseyDbKvSetErrorReply.model_validate(reply)
    assert error.success is False and error.error.code == Code.MISSING_FIELD, error
    assert error.error.message == "Required field 'key' is missing"
    assert msg.headers["Nats-Service-Error-Code"] == "400", msg.headers
    assert msg.headers["Rpc-Error-Code"] == "MISSING_FIELD" and msg.headers["Nats-Service-Error"] == error.error.message
    msg, reply, _ = await call("set", {"plugin_name": PLUGIN, "key": "big", "value": "x" * 70000})
    assert RoseyDbKvSetErrorReply.model_validate(reply).error.code == Code.VALUE_TOO_LARGE
    assert msg.headers["Nats-Service-Error-Code"] == "413"

    await nc.close()
    print(f"python plugin: {len(endpoints)} endpoints discovered, schemas and AsyncAPI fetched in-band, every call as documented")


asyncio.run(main())
