"""Move a hand-saved AG2 history (the ``_oai_messages`` JSON dump) into Amber.

    python examples/classic_migrate.py chat_state.json --agent assistant --key acme/customer-42/claims
    python examples/classic_migrate.py                        # makes a sample dump in a temp dir first

The dump is what users saved by hand, either one peer's list (``agent.chat_messages[peer]``, give
``--peer``) or ``{peer name: list}``, e.g. ``{p.name: m for p, m in agent.chat_messages.items()}``.
Importing is idempotent: run it again and nothing new is stored. Afterwards ``persist(agent, store,
key)`` rehydrates the history; the example shows it by attaching a fresh agent and printing what
it holds. Delete the JSON file (and the code that wrote it) once you are satisfied.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from autogen import ConversableAgent

from amber.ag2 import import_oai_messages, persist

SAMPLE = {
    "customer": [
        {"content": "My policy number is P-12345", "role": "user", "name": "customer"},
        {"content": "Thanks, I have noted policy P-12345.", "role": "assistant", "name": "assistant"},
        {"content": "The claim id is C-7788.", "role": "user", "name": "customer"},
    ]
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", nargs="?", help="JSON file: a list (with --peer) or {peer: list}")
    parser.add_argument("--agent", default="assistant", help="name of the agent whose history it is")
    parser.add_argument("--peer", help="the other agent's name, when the dump is a single list")
    parser.add_argument("--key", default="acme/customer-42/claims", help="tenant/user/thread")
    parser.add_argument("--store", default="sqlite:///amber-classic.db")
    args = parser.parse_args()

    if args.dump is None:
        path = Path(tempfile.mkdtemp()) / "chat_state.json"
        path.write_text(json.dumps(SAMPLE, indent=2))
        print(f"no dump given; wrote a sample to {path}")
    else:
        path = Path(args.dump)
    dump = json.loads(path.read_text())
    if isinstance(dump, dict) and "messages" in dump and not args.peer:
        dump = dump["messages"]  # the {"messages": ...} shape of the common hand-written save_state()

    added = import_oai_messages(args.store, args.key, dump, agent=args.agent, peer=args.peer)
    print(f"imported {added} new message(s) into {args.store} under {args.key}")

    # Proof: a fresh agent attached to the same key gets the history back.
    agent = ConversableAgent(args.agent, llm_config=False, human_input_mode="NEVER")
    history = persist(agent, args.store, args.key)
    peers = [args.peer] if args.peer else list(dump)
    for peer in peers:
        print(f"\n{args.agent}'s history with {peer}, as persist() restores it:")
        for m in history.history(peer):
            print(f"  [{m['role']}] {m.get('name', '')}: {m.get('content')}")


if __name__ == "__main__":
    main()
