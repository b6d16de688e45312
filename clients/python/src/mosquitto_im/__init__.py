"""mosquitto_im: a client of the mosquitto-im plugin (MQTT instant messaging).

    from mosquitto_im import Client, JsonFileStore

    c = Client("alice", "localhost", 1883, store=JsonFileStore("alice.json"))
    c.on_message = lambda m: print(m.conversation, m.sender, m.text)
    c.start()
    c.wait_online(10)
    receipt = c.send("u/bob", "hello").result(10)

The protocol is docs/PROTOCOL.md of the mosquitto-im project; Client runs
its client algorithm (section 7). See README.md.
"""
from .client import Client, valid_name
from .frame import decode as decode_frame
from .store import JsonFileStore, MemoryStore, PendingSend, State, Store
from .types import (ConnectionLostError, Conversation, ConversationPage, Flag, FrameError, GroupInfo,
                    GroupResult, ImError, Membership, Message, NotConnectedError, ReadMark, Receipt,
                    RefusedError, RequestTimeout, Status, StoreError, Typing)

__version__ = "0.1.0"

__all__ = [
    "Client", "valid_name", "decode_frame",
    "Store", "MemoryStore", "JsonFileStore", "State", "PendingSend",
    "Message", "Receipt", "ReadMark", "Typing", "Membership", "GroupInfo", "GroupResult",
    "Conversation", "ConversationPage", "Flag", "Status",
    "ImError", "RefusedError", "NotConnectedError", "ConnectionLostError", "RequestTimeout",
    "FrameError", "StoreError",
]
