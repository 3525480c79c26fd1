"""Client identity: canonical ids, platform rules, primary/secondary ids (TR §1).

A client id is `<platform>:<uid>` where both parts are canonical. Canonicalisation makes
every spelling of one account the same id, so re-spelling an id cannot get past a block;
ids then compare exactly (no wildcards anywhere). A sender without a usable id is
`anonymous` and is never stored.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping

import attrs

from trust._model import ANONYMOUS as ANONYMOUS

PlatformRule = Callable[[str], str]
"""A platform rule: takes the surrounding-stripped raw id, returns its canonical form or
raises `ValueError` with a message saying what is wrong."""

_ASCII_WS = " \t\n\r\x0b\x0c"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PLATFORM_RE = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_MAX_UID = 256


class InvalidClientId(ValueError):
    """A platform or user id that cannot be canonicalised; `code` is `invalid_client_id`."""

    code = "invalid_client_id"


def canonical_platform(raw: str) -> str:
    """Strip ASCII whitespace, ASCII-lowercase, check `[a-z][a-z0-9_.-]{0,31}` (§1 step 1)."""
    if not isinstance(raw, str):
        raise InvalidClientId(f"platform must be text, not {type(raw).__name__}")
    text = raw.strip(_ASCII_WS).translate(_ASCII_LOWER)
    if not _PLATFORM_RE.fullmatch(text):
        raise InvalidClientId(f"invalid platform {text!r}: must match [a-z][a-z0-9_.-]{{0,31}}")
    return text


# --- built-in platform rules -------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")
_TELEGRAM = re.compile(r"-?[0-9]+")
_SLACK = re.compile(r"[A-Za-z0-9]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PHONE = re.compile(r"\+?[0-9 ()\-]+")
_CO = re.compile(r"(?:0[xX])?([0-9a-fA-F]{64})")
_WHATSAPP_SUFFIXES = ("@s.whatsapp.net", "@c.us")


def _discord(uid: str) -> str:
    if not _DIGITS.fullmatch(uid):
        raise ValueError("discord ids are ASCII digits")
    stripped = uid.lstrip("0") or "0"
    if len(stripped) > 20:
        raise ValueError("discord ids have at most 20 digits")
    return stripped


def _telegram(uid: str) -> str:
    if not _TELEGRAM.fullmatch(uid):
        raise ValueError("telegram ids are an optional '-' and ASCII digits")
    return str(int(uid))


def _slack(uid: str) -> str:
    if not _SLACK.fullmatch(uid):
        raise ValueError("slack ids are ASCII letters and digits")
    return uid.upper()


def _signal(uid: str) -> str:
    if _UUID.fullmatch(uid):
        return uid.lower()
    if _PHONE.fullmatch(uid):
        digits = re.sub(r"[^0-9]", "", uid)
        if 8 <= len(digits) <= 15 and "+" not in uid[1:]:
            return "+" + digits
    raise ValueError("signal ids are a UUID or a phone number of 8-15 digits")


def _whatsapp(uid: str) -> str:
    text = uid
    lowered = text.lower()
    for suffix in _WHATSAPP_SUFFIXES:
        if lowered.endswith(suffix):
            text = text[: -len(suffix)]
            break
    text = re.sub(r"[ ()\-]", "", text)
    text = text.removeprefix("+")
    if not _DIGITS.fullmatch(text) or not 5 <= len(text) <= 20:
        raise ValueError("whatsapp ids are phone numbers of 5-20 digits")
    return text


def _co(uid: str) -> str:
    match = _CO.fullmatch(uid)
    if match is None:
        raise ValueError("co ids are a connectonion address: optional 0x and 64 hex digits")
    return "0x" + match.group(1).lower()


BUILTIN_RULES: Mapping[str, PlatformRule] = {
    "discord": _discord,
    "telegram": _telegram,
    "slack": _slack,
    "signal": _signal,
    "whatsapp": _whatsapp,
    "co": _co,
}
"""The built-in platform rules of §1 (others: steps 1-2 only)."""


def _bad_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "CZ"


@attrs.frozen
class Canonicalizer:
    """The active canonicalisation rules: built-ins, operator rules and casefolded platforms.

    Immutable; build one per configuration. `rules` extends or overrides `BUILTIN_RULES`.
    """

    rules: Mapping[str, PlatformRule] = attrs.field(factory=dict)
    casefold_platforms: frozenset[str] = frozenset()

    def rule_for(self, platform: str) -> PlatformRule | None:
        """The rule for a canonical platform, operator rules first."""
        return self.rules.get(platform) or BUILTIN_RULES.get(platform)

    def user_id(self, platform: str, raw: object) -> str:
        """Canonicalise a user id for a canonical platform (§1 steps 2-3, C2, C4)."""
        if not isinstance(raw, str):
            raise InvalidClientId(f"user id must be text, not {type(raw).__name__}")
        text = unicodedata.normalize("NFC", raw).strip()
        rule = self.rule_for(platform)
        if rule is not None:
            try:
                text = rule(text)
            except ValueError as exc:
                raise InvalidClientId(f"invalid {platform} user id {raw!r}: {exc}") from None
        if platform in self.casefold_platforms:
            text = text.casefold()
        text = unicodedata.normalize("NFC", text)
        if not 1 <= len(text) <= _MAX_UID:
            raise InvalidClientId(f"user id must be 1-{_MAX_UID} characters, got {len(text)}")
        bad = next((ch for ch in text if _bad_char(ch)), None)
        if bad is not None:
            raise InvalidClientId(
                f"user id {raw!r} contains U+{ord(bad):04X} "
                f"({unicodedata.category(bad)}: control, format, separator or unassigned)"
            )
        return text

    def client_id(self, platform: str, user_id: object) -> str:
        """`<platform>:<uid>` from a raw platform and raw user id."""
        canon = canonical_platform(platform)
        return f"{canon}:{self.user_id(canon, user_id)}"

    def parse(self, typed: str) -> str:
        """A typed id (CLI, chat, import): split at the first `:`, canonicalise both (T6)."""
        if not isinstance(typed, str) or ":" not in typed:
            raise InvalidClientId(f"invalid client id {typed!r}: expected <platform>:<user id>")
        platform, _, uid = typed.partition(":")
        return self.client_id(platform, uid)

    def is_canonical(self, client_id: str) -> bool:
        """True when a stored id is canonical under these rules (T5)."""
        try:
            return self.parse(client_id) == client_id
        except InvalidClientId:
            return False

    def non_canonical(self, client_ids: Iterable[str]) -> list[str]:
        """The stored ids that these rules would spell differently or reject (T5)."""
        return [cid for cid in client_ids if not self.is_canonical(cid)]

    def identify(
        self, platform: str | None, user_id: str | None, user_id_alt: str | None = None
    ) -> Identification:
        """The primary and secondary id of a message's sender, or anonymous (§1, C6, C8)."""
        if not platform:
            return Identification.anonymous("no platform")
        try:
            canon = canonical_platform(platform)
        except InvalidClientId as exc:
            return Identification.anonymous(str(exc))
        if user_id_alt is not None and user_id_alt != "":
            try:
                primary = f"{canon}:{self.user_id(canon, user_id_alt)}"
            except InvalidClientId as exc:
                return Identification.anonymous(f"user_id_alt: {exc}")
            if user_id is None or user_id == "":
                return Identification(primary=primary)
            try:
                secondary = f"{canon}:{self.user_id(canon, user_id)}"
            except InvalidClientId as exc:
                return Identification(primary=primary, warning=f"user_id ignored: {exc}")
            return Identification(
                primary=primary, secondary=secondary if secondary != primary else None
            )
        if user_id is None or user_id == "":
            return Identification.anonymous("no user id")
        try:
            return Identification(primary=f"{canon}:{self.user_id(canon, user_id)}")
        except InvalidClientId as exc:
            return Identification.anonymous(f"user_id: {exc}")


@attrs.frozen
class Identification:
    """Who sent a message: `primary` id, optional `secondary` id, or anonymous.

    `warning` explains a dropped secondary id (C6) or why the sender is anonymous.
    """

    primary: str
    secondary: str | None = None
    warning: str | None = None

    @property
    def is_anonymous(self) -> bool:
        """True for a sender without a usable id (§1 Anonymous)."""
        return self.primary == ANONYMOUS

    @classmethod
    def anonymous(cls, why: str) -> Identification:
        """An anonymous sender, with the reason kept for logging."""
        return cls(primary=ANONYMOUS, warning=why)


DEFAULT_CANONICALIZER = Canonicalizer()
"""Built-in rules, nothing casefolded."""


def parse_client_id(typed: str, canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER) -> str:
    """A typed id in canonical form, or `InvalidClientId` (T6, T7)."""
    return canonicalizer.parse(typed)


def identify(
    platform: str | None,
    user_id: str | None,
    user_id_alt: str | None = None,
    canonicalizer: Canonicalizer = DEFAULT_CANONICALIZER,
) -> Identification:
    """The sender of a message under `canonicalizer` (see `Canonicalizer.identify`)."""
    return canonicalizer.identify(platform, user_id, user_id_alt)


def parse_platform_list(text: str | None) -> frozenset[str]:
    """A comma list of platforms (`RELAY_TRUST_CASEFOLD_PLATFORMS`), each canonicalised."""
    if not text:
        return frozenset()
    return frozenset(canonical_platform(p) for p in text.split(",") if p.strip())
