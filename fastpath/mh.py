"""Mobility Header (RFC 6275 §6.1, §6.2): parse and build, sans-IO.

The control plane reads Binding Updates and writes Binding Acknowledgements
and Binding Errors through this module; the data plane only recognises MH by
next header 135.  Everything here works on `bytes` and never touches a socket.

Addresses are 16-byte `bytes`; `ip6("2001:db8::1")` converts from text.
`parse()` reports malformed input with `MHError`, whose `action` says what
RFC 6275 §9.2 asks the receiver to do about it.
"""
from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, replace
from typing import ClassVar, Union

IPPROTO_MH = 135    # next header value of the Mobility Header
IPPROTO_NONE = 59   # the only valid Payload Proto (§6.1.1)

_HEADER_LEN = 6     # Payload Proto, Header Len, MH Type, Reserved, Checksum
_MAX_LEN = 8 * 256  # Header Len is one octet counting 8-octet units beyond the first 8


class MHType(enum.IntEnum):
    """MH Type values defined by RFC 6275 §6.1.2-§6.1.9."""
    BINDING_REFRESH_REQUEST = 0
    HOME_TEST_INIT = 1
    CARE_OF_TEST_INIT = 2
    HOME_TEST = 3
    CARE_OF_TEST = 4
    BINDING_UPDATE = 5
    BINDING_ACK = 6
    BINDING_ERROR = 7


# Octets each message needs before its options, the 6-octet header included.
# Header Len must cover at least this much (§9.2); other MH types are unknown.
_MIN_LENGTH = {
    MHType.BINDING_REFRESH_REQUEST: 8,   # reserved(2)
    MHType.HOME_TEST_INIT: 16,           # reserved(2) cookie(8)
    MHType.CARE_OF_TEST_INIT: 16,        # reserved(2) cookie(8)
    MHType.HOME_TEST: 24,                # index(2) cookie(8) token(8)
    MHType.CARE_OF_TEST: 24,             # index(2) cookie(8) token(8)
    MHType.BINDING_UPDATE: 12,           # sequence(2) flags(2) lifetime(2)
    MHType.BINDING_ACK: 12,              # status(1) flags(1) sequence(2) lifetime(2)
    MHType.BINDING_ERROR: 24,            # status(1) reserved(1) home address(16)
}


class BAStatus(enum.IntEnum):
    """Binding Acknowledgement Status (§6.1.8). Below 128: accepted."""
    BINDING_UPDATE_ACCEPTED = 0
    ACCEPTED_BUT_PREFIX_DISCOVERY_NECESSARY = 1
    REASON_UNSPECIFIED = 128
    ADMINISTRATIVELY_PROHIBITED = 129
    INSUFFICIENT_RESOURCES = 130
    HOME_REGISTRATION_NOT_SUPPORTED = 131
    NOT_HOME_SUBNET = 132
    NOT_HOME_AGENT_FOR_THIS_MOBILE_NODE = 133
    DUPLICATE_ADDRESS_DETECTION_FAILED = 134
    SEQUENCE_NUMBER_OUT_OF_WINDOW = 135
    EXPIRED_HOME_NONCE_INDEX = 136
    EXPIRED_CARE_OF_NONCE_INDEX = 137
    EXPIRED_NONCES = 138
    REGISTRATION_TYPE_CHANGE_DISALLOWED = 139
    # 140 is not in RFC 6275: IANA gave it to NEMO (RFC 3963).
    MOBILE_ROUTER_OPERATION_NOT_PERMITTED = 140
    # RFC 6275 added this one; IANA assigned it 174.
    INVALID_CARE_OF_ADDRESS = 174


class BEStatus(enum.IntEnum):
    """Binding Error Status (§6.1.9)."""
    UNKNOWN_BINDING_FOR_HOME_ADDRESS_DESTINATION_OPTION = 1
    UNRECOGNIZED_MH_TYPE_VALUE = 2


class OptionType(enum.IntEnum):
    """Mobility option types (§6.2.2-§6.2.7)."""
    PAD1 = 0
    PADN = 1
    BINDING_REFRESH_ADVICE = 2
    ALTERNATE_CARE_OF_ADDRESS = 3
    NONCE_INDICES = 4
    BINDING_AUTHORIZATION_DATA = 5


# Alignment xn+y of each option's type octet, counted from the start of the
# Mobility Header (§6.2.1); options not listed have no requirement.
_ALIGNMENT = {
    OptionType.BINDING_REFRESH_ADVICE: (2, 0),
    OptionType.ALTERNATE_CARE_OF_ADDRESS: (8, 6),
    OptionType.NONCE_INDICES: (2, 0),
    OptionType.BINDING_AUTHORIZATION_DATA: (8, 2),
}


# ---------------------------------------------------------------- errors

class MHError(ValueError):
    """A Mobility Header the receiver must not process (RFC 6275 §9.2).

    action: what the receiver does besides dropping the message:
      'discard'        nothing else (bad checksum, truncated, malformed options);
      'param_problem'  send ICMPv6 Parameter Problem with `code` and `pointer`;
      'binding_error'  send a Binding Error with `status`.
    pointer: offset of the offending octet from the start of the Mobility
      Header; add the header's offset in the packet for the ICMP pointer.
    """

    DISCARD = "discard"
    PARAM_PROBLEM = "param_problem"
    BINDING_ERROR = "binding_error"

    def __init__(self, problem: str, pointer: int | None = None,
                 code: int | None = None, *, action: str,
                 status: int | None = None):
        super().__init__(problem)
        self.problem = problem
        self.pointer = pointer
        self.code = code
        self.action = action
        self.status = status

    @classmethod
    def discard(cls, problem: str, pointer: int | None = None) -> MHError:
        return cls(problem, pointer, action=cls.DISCARD)

    @classmethod
    def param_problem(cls, problem: str, pointer: int) -> MHError:
        # Code 0: erroneous header field encountered (RFC 4443 §3.4).
        return cls(problem, pointer, 0, action=cls.PARAM_PROBLEM)

    @classmethod
    def binding_error(cls, problem: str, status: int) -> MHError:
        return cls(problem, action=cls.BINDING_ERROR, status=status)

    def __repr__(self) -> str:
        return (f"MHError({self.problem!r}, action={self.action!r}, "
                f"pointer={self.pointer!r}, code={self.code!r}, status={self.status!r})")


# ---------------------------------------------------------------- addresses

def ip6(text: str) -> bytes:
    """'2001:db8::1' -> 16 bytes."""
    return ipaddress.IPv6Address(text).packed


def ip6_str(address: bytes) -> str:
    """16 bytes -> compressed text form."""
    return str(ipaddress.IPv6Address(address))


def _check_address(name: str, address: bytes) -> None:
    if not isinstance(address, (bytes, bytearray)) or len(address) != 16:
        raise ValueError(f"{name} must be 16 bytes, got {address!r}")


def _check_uint(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must fit in {bits} bits, got {value!r}")


# ---------------------------------------------------------------- options

@dataclass(frozen=True)
class Pad1:
    """One octet of padding; the only option without a length octet."""
    opt_type: ClassVar[int] = OptionType.PAD1


@dataclass(frozen=True)
class PadN:
    """`n` octets of padding (n >= 2); the content is zero and ignored."""
    n: int = 2
    opt_type: ClassVar[int] = OptionType.PADN

    def __post_init__(self):
        if not 2 <= self.n <= 257:
            raise ValueError(f"PadN spans 2..257 octets, got {self.n}")

    def body(self) -> bytes:
        return bytes(self.n - 2)


@dataclass(frozen=True)
class BindingRefreshAdvice:
    """§6.2.4: in a Binding Ack, when to refresh; 4-second units."""
    interval: int
    opt_type: ClassVar[int] = OptionType.BINDING_REFRESH_ADVICE

    def __post_init__(self):
        _check_uint("interval", self.interval, 16)

    @property
    def interval_seconds(self) -> int:
        return 4 * self.interval

    def body(self) -> bytes:
        return struct.pack("!H", self.interval)


@dataclass(frozen=True)
class AlternateCareOfAddress:
    """§6.2.5: the care-of address, when it is not the packet's source."""
    address: bytes
    opt_type: ClassVar[int] = OptionType.ALTERNATE_CARE_OF_ADDRESS

    def __post_init__(self):
        _check_address("address", self.address)

    def body(self) -> bytes:
        return bytes(self.address)


@dataclass(frozen=True)
class NonceIndices:
    """§6.2.6: which nonces the return-routability tokens came from."""
    home_nonce_index: int
    care_of_nonce_index: int
    opt_type: ClassVar[int] = OptionType.NONCE_INDICES

    def __post_init__(self):
        _check_uint("home_nonce_index", self.home_nonce_index, 16)
        _check_uint("care_of_nonce_index", self.care_of_nonce_index, 16)

    def body(self) -> bytes:
        return struct.pack("!HH", self.home_nonce_index, self.care_of_nonce_index)


@dataclass(frozen=True)
class BindingAuthorizationData:
    """§6.2.7: the authenticator; its length is whatever the option says."""
    authenticator: bytes
    opt_type: ClassVar[int] = OptionType.BINDING_AUTHORIZATION_DATA

    def __post_init__(self):
        if len(self.authenticator) > 255:
            raise ValueError("authenticator longer than 255 octets")

    def body(self) -> bytes:
        return bytes(self.authenticator)


@dataclass(frozen=True)
class UnknownOption:
    """An option this module does not interpret, kept so it survives a
    round trip (§6.2.1: receivers skip options they do not understand)."""
    opt_type: int
    data: bytes = b""

    def __post_init__(self):
        _check_uint("opt_type", self.opt_type, 8)
        if self.opt_type in _OPTION_DECODERS or self.opt_type == OptionType.PAD1:
            raise ValueError(f"option type {self.opt_type} has its own class")
        if len(self.data) > 255:
            raise ValueError("option data longer than 255 octets")

    def body(self) -> bytes:
        return bytes(self.data)


_OPTION_CLASSES = (Pad1, PadN, BindingRefreshAdvice, AlternateCareOfAddress,
                   NonceIndices, BindingAuthorizationData, UnknownOption)
Option = Union[_OPTION_CLASSES]


def _decode_padn(body: bytes) -> PadN:
    return PadN(len(body) + 2)


def _decode_refresh_advice(body: bytes) -> BindingRefreshAdvice:
    return BindingRefreshAdvice(*struct.unpack("!H", body))


def _decode_alternate_coa(body: bytes) -> AlternateCareOfAddress:
    return AlternateCareOfAddress(body)


def _decode_nonce_indices(body: bytes) -> NonceIndices:
    return NonceIndices(*struct.unpack("!HH", body))


def _decode_authorization_data(body: bytes) -> BindingAuthorizationData:
    return BindingAuthorizationData(body)


# option type -> (required body length or None for any, decoder)
_OPTION_DECODERS = {
    OptionType.PADN: (None, _decode_padn),
    OptionType.BINDING_REFRESH_ADVICE: (2, _decode_refresh_advice),
    OptionType.ALTERNATE_CARE_OF_ADDRESS: (16, _decode_alternate_coa),
    OptionType.NONCE_INDICES: (4, _decode_nonce_indices),
    OptionType.BINDING_AUTHORIZATION_DATA: (None, _decode_authorization_data),
}


def _check_options(options) -> tuple:
    options = tuple(options)
    for option in options:
        if not isinstance(option, _OPTION_CLASSES):
            raise ValueError(f"not a mobility option: {option!r}")
    return options


# ---------------------------------------------------------------- messages

@dataclass(frozen=True)
class BindingUpdate:
    """§6.1.7. `lifetime` is in 4-second units; `extra_flags` holds the 12
    bits after A/H/L/K (flags of later RFCs, or reserved) untouched."""
    sequence: int
    lifetime: int
    ack: bool = False          # A: acknowledgement requested
    home: bool = False         # H: home registration
    link_local: bool = False   # L: link-local address compatibility
    key_mgmt: bool = False     # K: key management mobility capability
    extra_flags: int = 0
    options: tuple = ()
    mh_type: ClassVar[int] = MHType.BINDING_UPDATE

    def __post_init__(self):
        _check_uint("sequence", self.sequence, 16)
        _check_uint("lifetime", self.lifetime, 16)
        _check_uint("extra_flags", self.extra_flags, 12)
        # A tuple keeps the message immutable and hashable.
        object.__setattr__(self, "options", _check_options(self.options))

    @property
    def lifetime_seconds(self) -> int:
        return 4 * self.lifetime

    def fixed_data(self) -> bytes:
        flags = ((self.ack << 15) | (self.home << 14) | (self.link_local << 13)
                 | (self.key_mgmt << 12) | self.extra_flags)
        return struct.pack("!HHH", self.sequence, flags, self.lifetime)


@dataclass(frozen=True)
class BindingAck:
    """§6.1.8. `lifetime` is in 4-second units; `extra_flags` holds the 7
    bits after K untouched."""
    status: int
    sequence: int
    lifetime: int
    key_mgmt: bool = False     # K: key management mobility capability
    extra_flags: int = 0
    options: tuple = ()
    mh_type: ClassVar[int] = MHType.BINDING_ACK

    def __post_init__(self):
        _check_uint("status", self.status, 8)
        _check_uint("sequence", self.sequence, 16)
        _check_uint("lifetime", self.lifetime, 16)
        _check_uint("extra_flags", self.extra_flags, 7)
        object.__setattr__(self, "options", _check_options(self.options))

    @property
    def lifetime_seconds(self) -> int:
        return 4 * self.lifetime

    @property
    def accepted(self) -> bool:
        # §6.1.8: values below 128 mean the Binding Update was accepted.
        return self.status < 128

    def fixed_data(self) -> bytes:
        flags = (self.key_mgmt << 7) | self.extra_flags
        return struct.pack("!BBHH", self.status, flags, self.sequence, self.lifetime)


@dataclass(frozen=True)
class BindingError:
    """§6.1.9. `home_address` is the HAO address of the offending packet, or
    the unspecified address when it had none."""
    status: int
    home_address: bytes = bytes(16)
    options: tuple = ()
    mh_type: ClassVar[int] = MHType.BINDING_ERROR

    def __post_init__(self):
        _check_uint("status", self.status, 8)
        _check_address("home_address", self.home_address)
        object.__setattr__(self, "options", _check_options(self.options))

    def fixed_data(self) -> bytes:
        return struct.pack("!BB", self.status, 0) + bytes(self.home_address)


@dataclass(frozen=True)
class RawMessage:
    """Any other MH type: `data` is everything after the checksum, options
    included, uninterpreted."""
    mh_type: int
    data: bytes = b"\x00\x00"

    def __post_init__(self):
        _check_uint("mh_type", self.mh_type, 8)

    @property
    def options(self) -> tuple:
        return ()

    def fixed_data(self) -> bytes:
        return bytes(self.data)


Message = Union[BindingUpdate, BindingAck, BindingError, RawMessage]


def alternate_coa(bu: BindingUpdate) -> bytes | None:
    """The Alternate Care-of Address option's address, if the BU has one
    (§6.2.5); should a sender repeat the option, the first one counts."""
    for option in bu.options:
        if isinstance(option, AlternateCareOfAddress):
            return option.address
    return None


def seq_newer(new: int, last: int) -> bool:
    """§9.5.1: `new` is newer than `last` unless it lies in `last` and the
    32768 values before it, modulo 2**16."""
    return 0 < (new - last) % 65536 < 32768


# ---------------------------------------------------------------- checksum

def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    # RFC 2460 §8.1: source, destination, upper-layer length, zero, next header.
    _check_address("src", src)
    _check_address("dst", dst)
    return bytes(src) + bytes(dst) + struct.pack("!I3xB", length, IPPROTO_MH)


def checksum(mh: bytes, src: bytes, dst: bytes) -> int:
    """The Checksum field value for `mh` sent from `src` to `dst` (§6.1.1);
    whatever `mh` holds in that field is treated as zero."""
    zeroed = bytes(mh[:4]) + b"\x00\x00" + bytes(mh[6:])
    return ~_ones_complement_sum(_pseudo_header(src, dst, len(mh)) + zeroed) & 0xFFFF


def _checksum_ok(mh: bytes, src: bytes, dst: bytes) -> bool:
    # Summing the field along with everything else gives all ones when it is right.
    return _ones_complement_sum(_pseudo_header(src, dst, len(mh)) + mh) == 0xFFFF


# ---------------------------------------------------------------- build

def _padding(n: int) -> bytes:
    """n octets of padding: Pad1 for one, PadN otherwise (§6.2.2, §6.2.3)."""
    if n == 0:
        return b""
    if n == 1:
        return b"\x00"
    return bytes((OptionType.PADN, n - 2)) + bytes(n - 2)


def _padding_before(offset: int, opt_type: int) -> int:
    """Octets needed so an option of `opt_type` starts at xn+y."""
    x, y = _ALIGNMENT.get(opt_type, (1, 0))
    return (y - offset) % x


def _encode_option(option: Option) -> bytes:
    if isinstance(option, Pad1):
        return b"\x00"
    body = option.body()
    return bytes((option.opt_type, len(body))) + body


def _encode_options(options, offset: int) -> bytes:
    """Options laid out from `offset` (from the start of the MH), each
    aligned as §6.2 requires, then padded to a multiple of 8 octets."""
    out = bytearray()
    for option in options:
        out += _padding(_padding_before(offset + len(out), option.opt_type))
        out += _encode_option(option)
    out += _padding(-(offset + len(out)) % 8)
    return bytes(out)


def build(msg: Message, src: bytes, dst: bytes) -> bytes:
    """The complete Mobility Header for `msg`, checksummed for a packet from
    `src` to `dst`: pass the home address as `src` when the packet carries a
    Home Address option, and the final destination as `dst` (§6.1.1)."""
    fixed = msg.fixed_data()
    offset = _HEADER_LEN + len(fixed)
    body = fixed + _encode_options(msg.options, offset)
    length = _HEADER_LEN + len(body)
    if length > _MAX_LEN:
        raise ValueError(f"Mobility Header of {length} octets does not fit Header Len")
    header_len = length // 8 - 1
    mh = struct.pack("!BBBBH", IPPROTO_NONE, header_len, msg.mh_type, 0, 0) + body
    return mh[:4] + struct.pack("!H", checksum(mh, src, dst)) + mh[6:]


# ---------------------------------------------------------------- parse

def _parse_options(mh: bytes, offset: int) -> tuple:
    """The options from `offset` to the end; any running past it is malformed."""
    options = []
    while offset < len(mh):
        if mh[offset] == OptionType.PAD1:
            options.append(Pad1())
            offset += 1
            continue
        if offset + 2 > len(mh):
            raise MHError.discard("option length runs past the end", offset)
        opt_type, opt_len = mh[offset], mh[offset + 1]
        end = offset + 2 + opt_len
        if end > len(mh):
            raise MHError.discard("option runs past the end", offset)
        options.append(_decode_option(opt_type, mh[offset + 2:end], offset))
        offset = end
    return tuple(options)


def _decode_option(opt_type: int, body: bytes, offset: int) -> Option:
    if opt_type not in _OPTION_DECODERS:
        return UnknownOption(opt_type, body)
    size, decode = _OPTION_DECODERS[opt_type]
    if size is not None and len(body) != size:
        raise MHError.discard(f"option {opt_type} has length {len(body)}, not {size}", offset)
    return decode(body)


def _parse_bu(mh: bytes) -> BindingUpdate:
    sequence, flags, lifetime = struct.unpack_from("!HHH", mh, 6)
    return BindingUpdate(
        sequence, lifetime,
        ack=bool(flags & 0x8000), home=bool(flags & 0x4000),
        link_local=bool(flags & 0x2000), key_mgmt=bool(flags & 0x1000),
        extra_flags=flags & 0x0FFF,
        options=_parse_options(mh, _MIN_LENGTH[MHType.BINDING_UPDATE]))


def _parse_ba(mh: bytes) -> BindingAck:
    status, flags, sequence, lifetime = struct.unpack_from("!BBHH", mh, 6)
    return BindingAck(
        status, sequence, lifetime,
        key_mgmt=bool(flags & 0x80), extra_flags=flags & 0x7F,
        options=_parse_options(mh, _MIN_LENGTH[MHType.BINDING_ACK]))


def _parse_be(mh: bytes) -> BindingError:
    return BindingError(
        mh[6], mh[8:24],
        options=_parse_options(mh, _MIN_LENGTH[MHType.BINDING_ERROR]))


def _parse_raw(mh: bytes) -> RawMessage:
    return RawMessage(mh[2], mh[_HEADER_LEN:])


_PARSERS = {
    MHType.BINDING_UPDATE: _parse_bu,
    MHType.BINDING_ACK: _parse_ba,
    MHType.BINDING_ERROR: _parse_be,
}


def _mh_length(data: bytes) -> int:
    """Octets of MH that Header Len announces; `data` must hold them all.
    Octets after it are ignored, as after any next header 59 (RFC 2460 §4.7)."""
    if len(data) < 8:
        raise MHError.discard(f"{len(data)} octets is shorter than any Mobility Header")
    length = 8 * (data[1] + 1)
    if length > len(data):
        raise MHError.discard(f"Header Len says {length} octets, only {len(data)} present", 1)
    return length


def _without_padding(msg: Message) -> Message:
    if isinstance(msg, RawMessage):
        return msg
    return replace(msg, options=tuple(
        option for option in msg.options if not isinstance(option, (Pad1, PadN))))


def parse(data: bytes, src: bytes, dst: bytes, verify_checksum: bool = True,
          keep_padding: bool = False) -> Message:
    """The message in the Mobility Header at the start of `data`, received
    from `src` (the HAO address if present) for `dst` (final destination).
    Checks follow the order of RFC 6275 §9.2; failures raise MHError.

    Pad1/PadN options are layout, so they are dropped unless `keep_padding`
    asks for them (then `build` reproduces zero-filled padding exactly)."""
    data = bytes(data)
    mh = data[:_mh_length(data)]
    if verify_checksum and not _checksum_ok(mh, src, dst):
        raise MHError.discard("bad checksum", 4)
    mh_type = mh[2]
    if mh_type not in _MIN_LENGTH:
        raise MHError.binding_error(f"unknown MH type {mh_type}",
                                    BEStatus.UNRECOGNIZED_MH_TYPE_VALUE)
    if mh[0] != IPPROTO_NONE:
        raise MHError.param_problem(f"Payload Proto {mh[0]}, not {IPPROTO_NONE}", 0)
    if len(mh) < _MIN_LENGTH[mh_type]:
        raise MHError.param_problem(
            f"Header Len {mh[1]} too short for MH type {mh_type}", 1)
    msg = _PARSERS.get(mh_type, _parse_raw)(mh)
    return msg if keep_padding else _without_padding(msg)


def pseudo_header_addresses(packet: bytes, mh_offset: int) -> tuple[bytes, bytes]:
    """(source, final destination) for the checksum of the Mobility Header at
    `mh_offset` of an IPv6 packet (RFC 6275 §6.1.1): the Home Address
    option's address, else the IPv6 source; a Type 2 Routing Header's
    address, else the IPv6 destination."""
    packet = bytes(packet)
    src, dst = packet[8:24], packet[24:40]
    nh, off = packet[6], 40
    while off < mh_offset and nh in (0, 43, 60):
        size = (packet[off + 1] + 1) * 8
        if nh == 43 and packet[off + 2] == 2 and size >= 24:
            dst = packet[off + 8:off + 24]
        elif nh == 60:
            i = off + 2
            while i + 1 < off + size:
                if packet[i] == 0:
                    i += 1
                    continue
                if packet[i] == 201 and packet[i + 1] == 16:
                    src = packet[i + 2:i + 18]
                i += 2 + packet[i + 1]
        nh, off = packet[off], off + size
    return src, dst
