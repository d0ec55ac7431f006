"""Known-answer vectors for bob/1: fixed entropy in, exact bytes out, as PROTOCOL.md section 9
writes them. A change to the key exchange, the key schedule or the record format fails here,
and so does a PROTOCOL.md that no longer says what the code does."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from spake2 import SPAKE2_A, SPAKE2_B

from retreatkit.transfer import hints
from retreatkit.transfer.codes import Code
from retreatkit.transfer.machine import (
    Answered,
    Confirmed,
    Hinted,
    Offered,
    PathChosen,
    Prefixed,
    Session,
    Started,
)
from retreatkit.transfer.offer import Entry, Offer
from retreatkit.transfer.pake import ID_RECEIVER, ID_SENDER, Side
from retreatkit.transfer.resume import Claim

PROTOCOL = Path(__file__).resolve().parents[2] / "PROTOCOL.md"
CODE = Code("7", ("purple", "sofa"))
OFFER = Offer(entries=(Entry(("hello.txt",), size=6),))
HINT = hints.Hint(ipaddress.ip_address("10.78.0.1"), 40000)
CLAIM = Claim(0, 3)  # the receiver holds "hel" of hello.txt
HASH = bytes.fromhex("1b8a09d9cd7d0f7f4eeab4a5a7fcd5acd1c72e5ec2d5c3d3b20e5c6b3dba9a7e")
NONCE = b"\x33" * 16  # the sender's nonce of the direct connection PATH names
L = 2**252 + 27742317777372353535851937790883648493  # the order of Ed25519's base point


def sender_entropy(n: int) -> bytes:
    return b"\x11" * n


def receiver_entropy(n: int) -> bytes:
    return b"\x22" * n


def vectors() -> dict[str, str]:
    sender = Session(Side.SENDER, CODE, sender_entropy)
    receiver = Session(Side.RECEIVER, CODE, receiver_entropy)
    pake_s, pake_r = sender.start(), receiver.start()
    receiver.receive_data(pake_s)
    sender.receive_data(pake_r)
    assert receiver.next_event() is None and sender.next_event() is None
    confirm_s, confirm_r = sender.data_to_send(), receiver.data_to_send()
    receiver.receive_data(confirm_s)
    sender.receive_data(confirm_r)
    confirmed = receiver.next_event()
    assert isinstance(confirmed, Confirmed) and sender.next_event() == confirmed
    hints_record = sender.send_hints([HINT])
    receiver.receive_data(hints_record)
    assert receiver.next_event() == Hinted((HINT,))
    receiver_hints = receiver.send_hints([])
    sender.receive_data(receiver_hints)
    assert sender.next_event() == Hinted(())
    offer_record = sender.send_offer(OFFER)
    receiver.receive_data(offer_record)
    assert receiver.next_event() == Offered(OFFER)
    answer_record = receiver.answer(True, CLAIM)
    sender.receive_data(answer_record)
    assert sender.next_event() == Answered(True, CLAIM)
    prefix_record = sender.send_prefix([HASH])
    receiver.receive_data(prefix_record)
    assert receiver.next_event() == Prefixed([HASH])
    from_record = receiver.send_from(CLAIM)
    sender.receive_data(from_record)
    assert sender.next_event() == Started(CLAIM)
    path_record = sender.send_path(NONCE)
    receiver.receive_data(path_record)
    assert receiver.next_event() == PathChosen(NONCE)
    # K itself never leaves the Pake object: compute it again with python-spake2
    password = CODE.pake_password()
    a = SPAKE2_A(password, idA=ID_SENDER, idB=ID_RECEIVER, entropy_f=sender_entropy)
    b = SPAKE2_B(password, idA=ID_SENDER, idB=ID_RECEIVER, entropy_f=receiver_entropy)
    message_a, message_b = a.start(), b.start()
    key = a.finish(message_b)
    assert b.finish(message_a) == key
    keys = sender._keys
    assert keys is not None
    return {
        "password": password.hex(),
        "x": f"{int.from_bytes(sender_entropy(64), 'big') % L:064x}",
        "y": f"{int.from_bytes(receiver_entropy(64), 'big') % L:064x}",
        "pake_sender": pake_s.hex(),
        "pake_receiver": pake_r.hex(),
        "K": key.hex(),
        "k_s2r": keys.send.hex(),
        "k_r2s": keys.receive.hex(),
        "c_s": keys.my_confirm.hex(),
        "c_r": keys.their_confirm.hex(),
        "confirm_sender": confirm_s.hex(),
        "confirm_receiver": confirm_r.hex(),
        "verifier": confirmed.verifier,
        "d_s": keys.my_direct.hex(),
        "d_r": keys.their_direct.hex(),
        "hints_sender": hints_record.hex(),
        "hints_receiver": receiver_hints.hex(),
        "offer_plaintext": OFFER.encode().hex(),
        "offer_record": offer_record.hex(),
        "answer_record": answer_record.hex(),
        "prefix_record": prefix_record.hex(),
        "from_record": from_record.hex(),
        "path_record": path_record.hex(),
        "direct_hello": hints.hello(Side.SENDER, NONCE).hex(),
        "direct_mac": hints.mac(keys.my_direct, NONCE, b"\x44" * 16).hex(),
    }


def documented() -> dict[str, str]:
    text = PROTOCOL.read_text()
    block = text.split("## 9. Known-answer vectors", 1)[1].split("```", 2)[1]
    return dict(re.findall(r"^(\w+)\s+([0-9a-f]+)$", block, re.M))


def test_the_code_produces_the_documented_bytes() -> None:
    assert vectors() == documented()


def test_the_vectors_hold_together() -> None:
    v = vectors()
    assert v["confirm_sender"] == "02000020" + v["c_s"]
    assert v["confirm_receiver"] == "02000020" + v["c_r"]
    assert v["pake_sender"].startswith("0100002141")  # PAKE, 33 bytes, side "A"
    assert v["pake_receiver"].startswith("0100002142")  # side "B"
    plaintext = bytes.fromhex(v["offer_plaintext"])
    assert plaintext == b'\x00\x00\x00){"v":1,"entries":[[["hello.txt"],"f",6]]}'
    assert len(bytes.fromhex(v["offer_record"])) == 4 + len(plaintext) + 16
    assert v["hints_sender"].startswith("18000018")  # HINTS: 1 + 1 + 4 + 2 bytes + tag
    assert v["hints_receiver"].startswith("18000011")  # no hints: the count alone, + tag
    assert v["answer_record"].startswith("1100001f")  # "yes" + u32 + u64, + tag
    assert v["path_record"].startswith("1b000021")  # 0x01 + a 16-byte nonce, + tag
    assert v["direct_hello"] == (hints.HELLO_PREFIX + b"S" + NONCE).hex()


if __name__ == "__main__":  # print the block for PROTOCOL.md
    for name, value in vectors().items():
        print(f"{name:<17} {value}")
