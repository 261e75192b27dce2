"""RELOAD access control policies (RFC 6940 §7.3): may this signer write this value here?

The four policies of the base protocol, plus the two of the p2pcdn usages (NODE-KEY-MATCH,
USER-PREFIX-MATCH, docs/usages.md), are pure functions of the Resource-ID, the Kind's
policy parameters (``max-node-multiple``), the stored data's dictionary key and the signer as
:class:`reload.security.Verifier` established it. The overlay's hash comes in as a
:data:`ResourceIdFunction` (CHORD-RELOAD's is :func:`chord_resource_id`, §10.2), so the module
knows no topology.

§7.3 applies a policy to the signer of each StoredData and, for a non-replica store, to the
signer of the StoreReq as well; the storage layer calls :func:`check_access` once per signer.
A denial is Error_Forbidden (§6.3.3.1); :class:`AccessDecision` carries the code and a reason.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

#: Error_Forbidden (§6.3.3.1, §14.9): what a failed access check answers.
ERROR_FORBIDDEN: Final = 0x02

#: Hashes a Resource Name (bytes) into a Resource-ID: the overlay's hash function (§7.3).
ResourceIdFunction = Callable[[bytes], bytes]

#: Upper bound on ``max-node-multiple`` we iterate (§7.3.4 says "small"; TURN-SERVICE uses
#: 20): a configuration asking for more is refused rather than costing a hash per i per store.
MAX_NODE_MULTIPLE: Final = 1024


def chord_resource_id(name: bytes) -> bytes:
    """CHORD-RELOAD's hash (§10.2): SHA-1 truncated to the high-order 128 bits."""
    return hashlib.sha1(name).digest()[:16]


class AccessPolicy(enum.StrEnum):
    """The §7.3 policies, by the name the configuration document uses (§11.1)."""

    USER_MATCH = "USER-MATCH"
    NODE_MATCH = "NODE-MATCH"
    USER_NODE_MATCH = "USER-NODE-MATCH"
    NODE_MULTIPLE = "NODE-MULTIPLE"
    # The p2pcdn usages' policies (docs/usages.md "Access control policies"), in the same
    # form as §7.3's: a Kind names one in its access-control element (§11.1.1 allows any
    # token; a node that does not know a policy denies every store of that Kind).
    NODE_KEY_MATCH = "NODE-KEY-MATCH"
    USER_PREFIX_MATCH = "USER-PREFIX-MATCH"


class Signer(Protocol):
    """What a policy reads of a verified signer (:class:`reload.security.VerifiedSigner`)."""

    @property
    def user_name(self) -> str | None: ...

    @property
    def node_id(self) -> bytes | None: ...


@dataclass(frozen=True)
class AccessDecision:
    """The result of a policy check: allowed, or why not (answered with ``error_code``)."""

    allowed: bool
    reason: str = ""
    error_code: int | None = None

    def __bool__(self) -> bool:
        return self.allowed


ALLOWED: Final = AccessDecision(True)


def _deny(reason: str) -> AccessDecision:
    return AccessDecision(False, reason, ERROR_FORBIDDEN)


class AccessDenied(Exception):
    """Raised by :func:`require_access`; ``error_code`` is Error_Forbidden."""

    def __init__(self, decision: AccessDecision) -> None:
        super().__init__(decision.reason)
        self.error_code = decision.error_code if decision.error_code is not None else 0
        self.reason = decision.reason


def user_match(
    resource_id: bytes, signer: Signer, resource_id_function: ResourceIdFunction
) -> AccessDecision:
    """§7.3.1 USER-MATCH: H(signer's user name) = Resource-ID."""
    if signer.user_name is None:
        return _deny("USER-MATCH: the signer's certificate has no user name")
    if resource_id_function(signer.user_name.encode("utf-8")) != resource_id:
        return _deny("USER-MATCH: H(user name) is not the Resource-ID")
    return ALLOWED


def node_match(
    resource_id: bytes, signer: Signer, resource_id_function: ResourceIdFunction
) -> AccessDecision:
    """§7.3.2 NODE-MATCH: H(Node-ID) = Resource-ID, for the Node-ID the SignerIdentity
    indicates (a cert_hash over a multi-Node-ID certificate indicates none)."""
    if signer.node_id is None:
        return _deny("NODE-MATCH: the SignerIdentity indicates no single Node-ID")
    if resource_id_function(signer.node_id) != resource_id:
        return _deny("NODE-MATCH: H(Node-ID) is not the Resource-ID")
    return ALLOWED


def user_node_match(
    resource_id: bytes,
    signer: Signer,
    resource_id_function: ResourceIdFunction,
    dictionary_key: bytes | None,
) -> AccessDecision:
    """§7.3.3 USER-NODE-MATCH (dictionary Kinds only): H(user name) = Resource-ID and the
    dictionary key is the Node-ID the SignerIdentity indicates."""
    if dictionary_key is None:
        return _deny("USER-NODE-MATCH applies to dictionary values only")
    decision = user_match(resource_id, signer, resource_id_function)
    if not decision:
        return _deny("USER-NODE-MATCH: " + decision.reason.removeprefix("USER-MATCH: "))
    if signer.node_id is None:
        return _deny("USER-NODE-MATCH: the SignerIdentity indicates no single Node-ID")
    if dictionary_key != signer.node_id:
        return _deny("USER-NODE-MATCH: the dictionary key is not the signer's Node-ID")
    return ALLOWED


def node_multiple_resource_id(
    node_id: bytes, i: int, resource_id_function: ResourceIdFunction
) -> bytes:
    """H(Node-ID ‖ i) of §7.3.4. The RFC does not say how i is encoded; we use a 4-byte
    big-endian integer, as §11.3.1 does for the index of a self-signed Node-ID."""
    return resource_id_function(node_id + struct.pack(">I", i))


def node_multiple(
    resource_id: bytes,
    signer: Signer,
    resource_id_function: ResourceIdFunction,
    max_node_multiple: int | None,
) -> AccessDecision:
    """§7.3.4 NODE-MULTIPLE: H(Node-ID ‖ i) = Resource-ID for some 1 ≤ i ≤ max-node-multiple
    (the Kind's ``max-node-multiple``, an integer > 0, §11.1). i is not on the wire, so every
    value is tried."""
    if max_node_multiple is None or not 1 <= max_node_multiple <= MAX_NODE_MULTIPLE:
        return _deny(f"NODE-MULTIPLE: max-node-multiple must be 1-{MAX_NODE_MULTIPLE}")
    if signer.node_id is None:
        return _deny("NODE-MULTIPLE: the SignerIdentity indicates no single Node-ID")
    for i in range(1, max_node_multiple + 1):
        if node_multiple_resource_id(signer.node_id, i, resource_id_function) == resource_id:
            return ALLOWED
    return _deny(f"NODE-MULTIPLE: no i ≤ {max_node_multiple} with H(Node-ID ‖ i) = Resource-ID")


def node_key_match(signer: Signer, dictionary_key: bytes | None) -> AccessDecision:
    """NODE-KEY-MATCH (docs/usages.md, dictionary Kinds only): the dictionary key is the
    Node-ID the SignerIdentity indicates; any Resource-ID. Like the key half of §7.3.3
    USER-NODE-MATCH without its user half: in the tracker overlay every writer is an enrolled
    tracker, and each may write only its own entry at any swarm, so one tracker cannot
    overwrite or erase the peers another tracker reported."""
    if dictionary_key is None:
        return _deny("NODE-KEY-MATCH applies to dictionary values only")
    if signer.node_id is None:
        return _deny("NODE-KEY-MATCH: the SignerIdentity indicates no single Node-ID")
    if dictionary_key != signer.node_id:
        return _deny("NODE-KEY-MATCH: the dictionary key is not the signer's Node-ID")
    return ALLOWED


def user_prefix_match(
    resource_id: bytes,
    signer: Signer,
    resource_id_function: ResourceIdFunction,
    dictionary_key: bytes | None,
) -> AccessDecision:
    """USER-PREFIX-MATCH (docs/usages.md, dictionary Kinds only): Resource-ID = H(user name
    ‖ "/" ‖ dictionary key). USER-MATCH (§7.3.1) gives a user one Resource-ID; this gives a
    user a namespace of them ("alice/movie", "alice/movie/7"), so content is writable only by
    the source whose certificate carries that user name. A user name containing "/" is
    refused: "a/b" ‖ "/" ‖ "c" would otherwise equal "a" ‖ "/" ‖ "b/c", letting user "a/b"
    write in user "a"'s namespace."""
    if dictionary_key is None:
        return _deny("USER-PREFIX-MATCH applies to dictionary values only")
    user = signer.user_name
    if user is None:
        return _deny("USER-PREFIX-MATCH: the signer's certificate has no user name")
    if "/" in user:
        return _deny("USER-PREFIX-MATCH: a user name containing '/' owns no namespace")
    if resource_id_function(user.encode("utf-8") + b"/" + dictionary_key) != resource_id:
        return _deny("USER-PREFIX-MATCH: H(user name / key) is not the Resource-ID")
    return ALLOWED


def check_access(
    policy: AccessPolicy | str,
    resource_id: bytes,
    signer: Signer,
    *,
    resource_id_function: ResourceIdFunction = chord_resource_id,
    dictionary_key: bytes | None = None,
    max_node_multiple: int | None = None,
) -> AccessDecision:
    """Apply the Kind's access control policy (§7.3) to one signer of one value.

    ``dictionary_key`` is the DictionaryEntry key for dictionary Kinds (None otherwise);
    ``max_node_multiple`` the Kind's parameter for NODE-MULTIPLE. An unknown policy name is
    denied: a Kind we cannot check must not be writable.
    """
    try:
        policy = AccessPolicy(policy)
    except ValueError:
        return _deny(f"unknown access control policy {policy!r}")
    if policy is AccessPolicy.USER_MATCH:
        return user_match(resource_id, signer, resource_id_function)
    if policy is AccessPolicy.NODE_MATCH:
        return node_match(resource_id, signer, resource_id_function)
    if policy is AccessPolicy.USER_NODE_MATCH:
        return user_node_match(resource_id, signer, resource_id_function, dictionary_key)
    if policy is AccessPolicy.NODE_KEY_MATCH:
        return node_key_match(signer, dictionary_key)
    if policy is AccessPolicy.USER_PREFIX_MATCH:
        return user_prefix_match(resource_id, signer, resource_id_function, dictionary_key)
    return node_multiple(resource_id, signer, resource_id_function, max_node_multiple)


def require_access(
    policy: AccessPolicy | str,
    resource_id: bytes,
    signer: Signer,
    *,
    resource_id_function: ResourceIdFunction = chord_resource_id,
    dictionary_key: bytes | None = None,
    max_node_multiple: int | None = None,
) -> None:
    """:func:`check_access`, raising :class:`AccessDenied` (Error_Forbidden) on denial."""
    decision = check_access(
        policy,
        resource_id,
        signer,
        resource_id_function=resource_id_function,
        dictionary_key=dictionary_key,
        max_node_multiple=max_node_multiple,
    )
    if not decision:
        raise AccessDenied(decision)
