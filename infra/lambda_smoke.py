#!/usr/bin/env python3
"""Every Lambda binary under a Lambda runtime emulator (`cargo lambda watch`),
against moto (DynamoDB, EventBridge, SQS), fed the samples in events/.

Flow: bootstrap the table with `crmbridge admin bootstrap`, then through the
real function binaries: admin creates a connection, webhook accepts a
delivery (202, then 200 for the redelivery), EventBridge routes the event to
an SQS queue exactly as the dispatch rule would, dispatch records one run
(and a redelivery records none), chat relays inline, tick records a tick,
admin lists the run. Every unmodified sample is also invoked and must get the
answer documented for it. Exits non-zero on the first mismatch.

Needs: CRMBRIDGE_TEST_AWS_ENDPOINT (moto), cargo lambda on PATH, and
$CARGO_TARGET_DIR/debug/crmbridge built (infra/test.sh does all of this).
"""
import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENDPOINT = os.environ["CRMBRIDGE_TEST_AWS_ENDPOINT"]
SUFFIX = f"{os.getpid()}-{int(time.time())}"
TABLE = f"crmbridge-smoke-{SUFFIX}"
BUS = f"crmbridge-smoke-{SUFFIX}"
FUNCTIONS = ["webhook", "chat", "admin", "dispatch", "tick"]


def fail(message):
    print(f"lambda smoke: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
    print(f"  ok: {message}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(name):
    with open(os.path.join(ROOT, "events", f"{name}.json")) as f:
        return json.load(f)


def invoke(port, function, event):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(event, f)
        path = f.name
    # The first invocation of a function compiles it; later ones are fast.
    out = subprocess.run(
        ["cargo", "lambda", "invoke", function, "--invoke-address", "127.0.0.1", "--invoke-port", str(port),
         "--data-file", path, "--output-format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    os.unlink(path)
    if out.returncode != 0:
        fail(f"cargo lambda invoke {function} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def http_body(reply):
    body = reply.get("body") or ""
    if reply.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body) if body else None


def with_path(event, path, params, body=None, headers=None):
    event = json.loads(json.dumps(event))
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    event["pathParameters"] = params
    if body is not None:
        event["body"] = body
    if headers:
        event["headers"].update(headers)
    return event


def main():
    env = dict(os.environ)
    env.update({
        "AWS_ENDPOINT_URL": ENDPOINT,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "CRMBRIDGE_TABLE": TABLE,
        "CRMBRIDGE_EVENT_BUS": BUS,
        "CRMBRIDGE_ENCRYPTION_KEYS": "smoke1:" + base64.b64encode(os.urandom(32)).decode(),
    })
    print("==> bootstrap the table (crmbridge admin bootstrap --create-table)")
    out = subprocess.run([os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "crmbridge"), "admin", "bootstrap", "--create-table"],
                         env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        fail(f"bootstrap failed: {out.stderr}")
    match = re.search(r"(cbk_[A-Za-z0-9_-]+)", out.stdout)
    check(match is not None, "bootstrap printed an owner key")
    owner_key = match.group(1)

    print("==> an EventBridge bus with the dispatch rule's pattern, routed to SQS")
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    events = session.client("events", endpoint_url=ENDPOINT)
    sqs = session.client("sqs", endpoint_url=ENDPOINT)
    events.create_event_bus(Name=BUS)
    queue_url = sqs.create_queue(QueueName=f"dispatch-{SUFFIX}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="dispatch", EventBusName=BUS, EventPattern=json.dumps({"source": ["crmbridge"]}))
    events.put_targets(Rule="dispatch", EventBusName=BUS, Targets=[{"Id": "q", "Arn": queue_arn}])

    port = free_port()
    env_file = tempfile.NamedTemporaryFile("w", suffix=".env", delete=False)
    for key in ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "CRMBRIDGE_TABLE", "CRMBRIDGE_EVENT_BUS", "CRMBRIDGE_ENCRYPTION_KEYS"]:
        env_file.write(f"{key}=\"{env[key]}\"\n")
    env_file.close()
    log = open(os.path.join(ROOT, ".tools/logs/cargo-lambda-watch.log"), "w")
    watch = subprocess.Popen(
        ["cargo", "lambda", "watch", "--invoke-address", "127.0.0.1", "--invoke-port", str(port),
         "--ignore-changes", "--env-file", env_file.name],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if watch.poll() is not None or time.time() > deadline:
                    fail("cargo lambda watch did not start (see .tools/logs/cargo-lambda-watch.log)")
                time.sleep(0.2)
        run_flow(port, owner_key, sqs, queue_url)
    finally:
        if watch.poll() is None:
            os.killpg(watch.pid, 15)
            watch.wait(timeout=30)
        os.unlink(env_file.name)
    print("lambda smoke: 1 passed, 0 failed")


def run_flow(port, owner_key, sqs, queue_url):
    print("==> admin: the samples, then create a connection")
    reply = invoke(port, "admin", sample("admin-health"))
    check(reply["statusCode"] == 200 and http_body(reply) == {"status": "ok"}, "admin answers events/admin-health.json with 200 ok")
    reply = invoke(port, "admin", sample("admin"))
    check(reply["statusCode"] == 401 and http_body(reply)["error"]["field"] == "authorization",
          "admin answers events/admin.json (placeholder key) with 401 naming authorization")
    event = sample("admin")
    event["headers"]["authorization"] = f"Bearer {owner_key}"
    reply = invoke(port, "admin", event)
    check(reply["statusCode"] == 201, f"admin created a connection ({reply['statusCode']})")
    connection = http_body(reply)
    check("sk-" not in json.dumps(connection) and connection["credentials_set"] == [], "no credential values in the answer")
    conn_id, token = connection["id"], connection["webhook_path"].rsplit("/", 1)[1]

    print("==> webhook: the sample, then a real delivery twice")
    reply = invoke(port, "webhook", sample("webhook"))
    check(reply["statusCode"] == 404 and http_body(reply)["error"]["code"] == "not_found",
          "webhook answers events/webhook.json (unknown connection) with 404")
    hook = with_path(sample("webhook"), f"/hooks/{conn_id}/{token}", {"connection": conn_id, "token": token})
    first = invoke(port, "webhook", hook)
    check(first["statusCode"] == 202 and http_body(first)["status"] == "accepted", "first delivery: 202 accepted")
    event_id = http_body(first)["event_ids"][0]
    second = invoke(port, "webhook", hook)
    check(second["statusCode"] == 200 and http_body(second)["event_ids"] == [event_id], "redelivery: 200 duplicate, same id")
    bad = with_path(sample("webhook"), f"/hooks/{conn_id}/wrong", {"connection": conn_id, "token": "wrong"})
    check(invoke(port, "webhook", bad)["statusCode"] == 401, "a wrong token: 401")

    print("==> EventBridge routed the event (once)")
    messages = []
    deadline = time.time() + 30
    while time.time() < deadline and not messages:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    check(len(messages) == 1, f"exactly one event on the bus ({len(messages)})")
    routed = json.loads(messages[0]["Body"])
    check(routed["source"] == "crmbridge" and routed["detail-type"] == "generic.order.created"
          and routed["detail"]["id"] == event_id, "source, detail-type and detail intact")

    print("==> dispatch: the routed event, its redelivery, and the sample")
    reply = invoke(port, "dispatch", routed)
    check(reply["duplicate"] is False and reply["runs"][0]["status"] == "no_match", "dispatch recorded a no_match run")
    reply = invoke(port, "dispatch", routed)
    check(reply["duplicate"] is True, "a redelivered event records no second run")
    reply = invoke(port, "dispatch", sample("dispatch"))
    check(reply["runs"][0]["event_id"] == sample("dispatch")["detail"]["id"], "dispatch handles events/dispatch.json")

    print("==> chat and tick")
    reply = invoke(port, "chat", sample("chat"))
    check(reply["statusCode"] == 404, "chat answers events/chat.json (unknown connection) with 404")
    chat = with_path(sample("chat"), f"/chat/{conn_id}/{token}", {"connection": conn_id, "token": token},
                     body=json.dumps({"id": "msg-1", "text": "hello"}))
    reply = invoke(port, "chat", chat)
    check(reply["statusCode"] == 200 and len(http_body(reply)["runs"]) == 1, "chat relayed inline: one run")
    reply = invoke(port, "tick", sample("tick"))
    check(reply == {"sources": [], "published": 0}, "tick answers events/tick.json")

    print("==> admin: the run log shows the runs")
    runs = with_path(sample("admin-health"), "/v1/runs", {"proxy": "runs"}, headers={"authorization": f"Bearer {owner_key}"})
    runs["requestContext"]["http"]["method"] = "GET"
    reply = invoke(port, "admin", runs)
    items = http_body(reply)["items"]
    check(reply["statusCode"] == 200 and len(items) == 2, f"two runs of this tenant listed ({len(items)})")


if __name__ == "__main__":
    main()
