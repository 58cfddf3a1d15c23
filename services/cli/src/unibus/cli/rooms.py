"""``unibus room|send|listen|blob``: a person's or an agent's E2E-encrypted rooms."""

from __future__ import annotations

import argparse
import asyncio
import datetime
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from unibus.cli._common import (
    Subparsers,
    TransferProgress,
    add_json_arg,
    print_json,
    print_json_line,
    progress,
)
from unibus.client.envelope import MAX_PLAINTEXT_BYTES
from unibus.client.profile import read_stack_info
from unibus.client.sdk import BlobRef, Client, heads_file_for
from unibus.core.errors import ConfigError
from unibus.core.nkeys import canonical_user_key, read_seed_file
from unibus.stack.layout import DEFAULT_DIR


def add_client_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("who and where")
    group.add_argument(
        "--identity",
        type=Path,
        default=None,
        help="your nkey seed file (default with --dir: the stack's first admin)",
    )
    group.add_argument("--dir", type=Path, default=None, help=f"local stack ({DEFAULT_DIR})")
    group.add_argument("--nats-url", action="append", default=None, metavar="URL")
    group.add_argument("--api-url", action="append", default=None, metavar="URL")
    group.add_argument("--ca", type=Path, default=None, help="CA certificate to pin (PEM)")


async def open_client(args: argparse.Namespace) -> Client:
    if args.nats_url or args.api_url:
        if not (args.nats_url and args.api_url and args.identity):
            raise ConfigError("explicit targets need --nats-url, --api-url and --identity")
        return await Client.open(
            identity=read_seed_file(args.identity),
            nats_urls=args.nats_url,
            api_urls=args.api_url,
            ca_file=args.ca,
            heads_file=heads_file_for(args.identity),
        )
    info = read_stack_info(args.dir or DEFAULT_DIR)
    identity = args.identity or Path(info.admin_seed_file)
    return await Client.open(
        identity=read_seed_file(identity),
        nats_urls=info.nats_urls,
        api_urls=info.api_urls,
        ca_file=args.ca or Path(info.ca_file),
        heads_file=heads_file_for(identity),
    )


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    room = verbs.add_parser("room", help="create, invite, remove, leave, list, adopt rooms")
    room_verbs = room.add_subparsers(dest="room_verb", metavar="VERB", required=True)

    create = room_verbs.add_parser("create", help="create a room (you are its owner)")
    create.add_argument(
        "--member", action="append", default=[], metavar="U…", help="invite at creation"
    )
    add_client_args(create)
    add_json_arg(create)
    create.set_defaults(handler=_sync(_create))

    invite = room_verbs.add_parser("invite", help="add a member (seals the room key to it)")
    invite.add_argument("room_id")
    invite.add_argument("member", metavar="U…")
    add_client_args(invite)
    invite.set_defaults(handler=_sync(_invite))

    remove = room_verbs.add_parser("remove", help="remove a member (new epoch, new key)")
    remove.add_argument("room_id")
    remove.add_argument("member", metavar="U…")
    add_client_args(remove)
    remove.set_defaults(handler=_sync(_remove))

    leave = room_verbs.add_parser(
        "leave", help="leave a room (not its owner); the others' next send rekeys it"
    )
    leave.add_argument("room_id")
    add_client_args(leave)
    leave.set_defaults(handler=_sync(_leave))

    listing = room_verbs.add_parser(
        "list", help="your rooms (those migrated from the legacy store and not adopted: marked)"
    )
    add_client_args(listing)
    add_json_arg(listing)
    listing.set_defaults(handler=_sync(_list))

    adopt = room_verbs.add_parser(
        "adopt",
        help="adopt a room migrated from the legacy store (its owner; an admin if the owner "
        "is revoked): sign its genesis, a fresh key for its members",
        description="Give a room migrated from the legacy store its signed genesis: the "
        "members it had who are still active, the epoch after its legacy ones, a fresh key "
        "sealed to each. Until then its members see it as awaiting adoption. Their legacy "
        "keys stay readable.",
    )
    adopt.add_argument("room_id")
    add_client_args(adopt)
    add_json_arg(adopt)
    adopt.set_defaults(handler=_sync(_adopt))

    send = verbs.add_parser("send", help="send an encrypted message to a room")
    send.add_argument("room_id")
    send.add_argument("text", nargs="?", default=None)
    send.add_argument("--file", type=Path, default=None, help="send a file's bytes instead")
    add_client_args(send)
    add_json_arg(send)
    send.set_defaults(handler=_sync(_send))

    listen = verbs.add_parser("listen", help="print a room's messages as they arrive")
    listen.add_argument("room_id")
    listen.add_argument("--history", action="store_true", help="first replay stored messages")
    listen.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    add_client_args(listen)
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    listen.set_defaults(handler=_sync(_listen))

    blob = verbs.add_parser("blob", help="encrypted attachments")
    blob_verbs = blob.add_subparsers(dest="blob_verb", metavar="VERB", required=True)
    put = blob_verbs.add_parser("put", help="encrypt and upload a file, announce it in the room")
    put.add_argument("room_id")
    put.add_argument("file", type=Path)
    add_client_args(put)
    add_json_arg(put)
    put.set_defaults(handler=_sync(_blob_put))
    get = blob_verbs.add_parser("get", help="download and decrypt a blob announced in the room")
    get.add_argument("room_id")
    get.add_argument("blob_id")
    get.add_argument("--out", type=Path, required=True)
    add_client_args(get)
    add_json_arg(get)
    get.set_defaults(handler=_sync(_blob_get))


def _sync(
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(handler(args))

    return run


async def _create(args: argparse.Namespace) -> int:
    members = [canonical_user_key(m) for m in args.member]
    async with await open_client(args) as client:
        room = await client.create_room(members)
    if args.json:
        print_json(
            {"room_id": room.room_id, "members": list(room.members), "epoch": room.state.epoch}
        )
    else:
        print(room.room_id)
    return 0


async def _invite(args: argparse.Namespace) -> int:
    async with await open_client(args) as client:
        room = await client.room(args.room_id)
        await room.invite(canonical_user_key(args.member))
    print(f"invited; {len(room.members)} member(s), epoch {room.state.epoch}")
    return 0


async def _remove(args: argparse.Namespace) -> int:
    async with await open_client(args) as client:
        room = await client.room(args.room_id)
        await room.remove(canonical_user_key(args.member))
    print(
        f"removed; new epoch {room.state.epoch} with a fresh key for {len(room.members)} member(s)"
    )
    return 0


async def _leave(args: argparse.Namespace) -> int:
    async with await open_client(args) as client:
        room = await client.room(args.room_id)
        await room.leave()
    print(f"left room {args.room_id}; you hold no key to what is sent from now on")
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with await open_client(args) as client:
        listed = []
        for room_id in await client.rooms():
            room = await client.room(room_id)
            listed.append((room_id, room.awaiting_adoption))
    if args.json:
        print_json([{"room_id": r, "awaiting_adoption": waiting} for r, waiting in listed])
    elif not listed:
        print("(no rooms)")
    else:
        for room_id, waiting in listed:
            note = f"  awaiting adoption: its owner runs `unibus room adopt {room_id}`"
            print(room_id + (note if waiting else ""))
    return 0


async def _adopt(args: argparse.Namespace) -> int:
    async with await open_client(args) as client:
        room = await client.room(args.room_id)
        await room.adopt()
    state = room.state
    if args.json:
        print_json(
            {
                "room_id": room.room_id,
                "members": list(state.members),
                "epoch": state.epoch,
                "legacy_epochs": state.legacy_epochs,
            }
        )
    else:
        print(
            f"adopted {room.room_id}: {len(state.members)} member(s), epoch {state.epoch} "
            f"after {state.legacy_epochs} legacy epoch(s), a fresh key sealed to each"
        )
    return 0


async def _send(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.file is None):
        raise ConfigError("give the message TEXT or --file FILE (one of them)")
    data = args.text.encode() if args.text is not None else args.file.read_bytes()
    if len(data) > MAX_PLAINTEXT_BYTES:
        raise ConfigError(
            f"a message holds at most {MAX_PLAINTEXT_BYTES} bytes, this one has {len(data)}: "
            "send a large file as a blob (`unibus blob put ROOM FILE`)"
        )
    async with await open_client(args) as client:
        room = await client.room(args.room_id)
        seq = await room.publish(data)
    if args.json:
        print_json({"room_id": args.room_id, "stream_seq": seq, "bytes": len(data)})
    else:
        print(f"sent ({len(data)} bytes, stored as #{seq})")
    return 0


async def _listen(args: argparse.Namespace) -> int:
    seen = 0
    async with await open_client(args) as client:
        room = await client.room(args.room_id)
        # One iterator for both: the live subscription starts before the replay, so
        # nothing published in between is missed, and nothing comes twice.
        async for message in room.subscribe(history=args.history):
            text = message.data.decode("utf-8", errors="replace")
            if args.json:
                print_json_line(
                    {
                        "sender": message.sender,
                        "epoch": message.epoch,
                        "text": text,
                        "msg_id": message.msg_id,
                    }
                )
            else:
                stamp = (message.time or datetime.datetime.now(datetime.UTC)).isoformat()
                print(f"{stamp} {message.sender[:10]}…: {text}", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
        if room.undeliverable.total:
            progress(f"undeliverable messages: {room.undeliverable.counts}")
    return 0


async def _blob_put(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise ConfigError(f"{args.file} is not a readable file")
    async with await open_client(args) as client:
        room = await client.room(args.room_id)
        ref = await client.put_blob(
            room, args.file, name=args.file.name, progress=TransferProgress()
        )
    if args.json:
        print_json({"blob_id": ref.blob_id, "sha256": ref.sha256, "size": ref.size})
    else:
        print(ref.blob_id)
    return 0


async def _blob_get(args: argparse.Namespace) -> int:
    async with await open_client(args) as client:
        room = await client.room(args.room_id)
        ref = None
        async for message in room.history():
            candidate = BlobRef.decode(message.data)
            if candidate is not None and candidate.blob_id == args.blob_id:
                ref = candidate
        if ref is None:
            raise ConfigError(
                f"no announcement of blob {args.blob_id} in this room's history: check the id "
                "(`unibus blob put` prints it) and that you were a member when it was sent"
            )
        size = await client.save_blob(room, ref, args.out, progress=TransferProgress())
    if args.json:
        print_json({"blob_id": ref.blob_id, "out": str(args.out), "size": size})
    else:
        print(f"wrote {size} bytes to {args.out} (hash checked)")
    return 0
