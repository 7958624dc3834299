"""Probe app: the ServerApp asks every SuperNode once which ClientApp answers and writes down
each reply (the ClientApp's name, or the error the SuperNode sent instead) as JSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

CLIENT_APP_NAME = "honest"  # tests build a different app by changing this line
REPLY_TIMEOUT = 120.0

client = ClientApp()
server = ServerApp()


@client.query()
def answer(msg: Message, context: Context) -> Message:
    """Name this ClientApp."""
    return Message(RecordDict({"probe": ConfigRecord({"app": CLIENT_APP_NAME})}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    """Query every connected SuperNode; write {node id: {"app"} or {"error_code", "reason"}}."""
    result_path = Path(str(context.run_config["result-path"]))
    deadline = time.monotonic() + REPLY_TIMEOUT
    while not (node_ids := list(grid.get_node_ids())) and time.monotonic() < deadline:
        time.sleep(0.5)
    queries = [
        Message(RecordDict({"probe": ConfigRecord({})}), dst_node_id=node, message_type="query")
        for node in node_ids
    ]
    answers: dict[str, dict[str, object]] = {}
    for reply in grid.send_and_receive(queries, timeout=REPLY_TIMEOUT):
        node = str(reply.metadata.src_node_id)
        if reply.has_error():
            answers[node] = {"error_code": reply.error.code, "reason": reply.error.reason}
        else:
            answers[node] = {"app": str(reply.content["probe"]["app"])}
    result_path.write_text(json.dumps(answers, sort_keys=True))
