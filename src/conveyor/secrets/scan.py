"""Finding likely plaintext secrets: the rules, over text already read (no I/O here).

`scan_text(path, text)` runs every rule over one file's text; `scan_config_values(config)` runs
them over the values of a loaded conveyor.toml (services' env, notification URLs, every other
string), so that `conveyor deploy` can refuse a literal credential. The file walker is
conveyor.secrets.scan_files; the command is `conveyor secrets scan`.

A finding never carries the value: only where it is, which rule matched, and the line with the
value masked. A finding is allowed in place by a comment `conveyor:allow-secret because <reason>`
on its line or the line before; a whole file (a test fixture) by
`conveyor:allow-secret-file because <reason>` in its first lines. The reason is required.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.config.models import Config

# --- findings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One likely secret: where it is and which rule found it, never the value itself."""

    file: str
    line: int | None
    rule: str
    excerpt: str  # the line (or key = value), with the value masked
    key: str | None = None  # the dotted conveyor.toml key, for findings in a configuration

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def __str__(self) -> str:
        key = f" ({self.key})" if self.key else ""
        return f"{self.where}: {self.rule}{key}: {self.excerpt}"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "rule": self.rule,
            "key": self.key,
            "excerpt": self.excerpt,
        }


# --- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    pattern: re.Pattern[str]
    # An extra test of a match and its value (entropy, the name it is assigned to).
    accept: Callable[[re.Match[str], str], bool] = lambda match, value: True


# Bits per character. Random base62/base64 of 16+ characters is above 3.7, English words ~3-4;
# hex has 16 symbols (4 bits at most) and random hex of 32 characters is ~3.4-3.8.
ENTROPY_THRESHOLD = 3.5
HEX_ENTROPY_THRESHOLD = 3.0
ENTROPY_MIN_LENGTH = 16
PASSWORD_MIN_LENGTH = 8

_B64 = r"[A-Za-z0-9+/=]"
_PEM_HEADER = r"-----BEGIN (?:(?:RSA|DSA|EC|OPENSSH|ENCRYPTED|PGP) )?PRIVATE KEY(?: BLOCK)?-----"


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s own character distribution."""
    if not value:
        return 0.0
    counts = Counter(value)
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


# Names whose value is a credential: *_KEY, *_SECRET, *_TOKEN, PASSWORD, *_PASSWORD (any case,
# with _ . or - between words, or none: apiKey, clientSecret).
_SECRET_NAME = re.compile(
    r"(?:^|[_.\-]|(?<=[a-z]))(?:key|secret|token|password|passwd|pwd|credentials?)$", re.IGNORECASE
)
# Names that end like one but hold public or non-secret things.
_NOT_SECRET_NAME = re.compile(
    r"(?:public|publishable|primary|foreign|sort|cache|partition|idempotency|lookup|hash|"
    r"ssh_host|signing_key_id|key_id|keyid|max_tokens?|num_tokens?|token_type|csrf)",
    re.IGNORECASE,
)
# Names for which a UUID is a credential; for a plain *_KEY a UUID is taken for an id.
_STRONG_NAME = re.compile(r"(?:secret|token|password|passwd|pwd|api_?key)$", re.IGNORECASE)
_PASSWORD_NAME = re.compile(r"(?:password|passwd|pwd)$", re.IGNORECASE)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def _assigned_secret(match: re.Match[str], value: str) -> bool:
    name = match.group("name")
    if not _SECRET_NAME.search(name) or _NOT_SECRET_NAME.search(name):
        return False
    if _looks_like_reference(value):
        return False
    if _UUID.fullmatch(value):
        return bool(_STRONG_NAME.search(name))
    if _demo_value(value):
        return False
    if _PASSWORD_NAME.search(name):
        # People choose passwords: any literal one that is no placeholder is one too many.
        return len(value) >= PASSWORD_MIN_LENGTH and len(set(value)) >= 5
    hexadecimal = re.fullmatch(r"[0-9a-fA-F]+", value) is not None
    threshold = HEX_ENTROPY_THRESHOLD if hexadecimal else ENTROPY_THRESHOLD
    return len(value) >= ENTROPY_MIN_LENGTH and shannon_entropy(value) >= threshold


_SLUG = re.compile(r"[a-z0-9]{1,12}(?:[-_][a-z0-9]{1,12}){2,}")


def _demo_value(value: str) -> bool:
    """A value written to be read: built on a well-known demo password ("hunter2-long"), or a
    phrase of short lowercase words ("s3cr3t-value-never-printed"), as tests and docs write them.
    Generated credentials are neither."""
    parts = re.split(r"[-_.:]", value.lower())
    return any(part in DEMO_PASSWORDS for part in parts) or bool(_SLUG.fullmatch(value))


def _looks_like_reference(value: str) -> bool:
    """Paths, URLs without credentials, dotted names, file names: where a secret is, not it."""
    if value.startswith(("/", "./", "../", "~/", "file:", "http://", "https://", "$")):
        return True
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+", value):
        return True  # settings.SECRET_KEY, os.environ.get
    if re.fullmatch(r"[\w.-]+\.(?:pem|key|crt|json|txt|p12|pfx|env|gpg|asc)", value):
        return True
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", value))  # another variable's name


def _aws_secret_key(match: re.Match[str], value: str) -> bool:
    return shannon_entropy(value) >= 4.0


RULES: tuple[Rule, ...] = (
    Rule(
        "gcp-service-account-key",
        "the private_key of a Google Cloud service account (JSON)",
        re.compile(r'"private_key"\s*:\s*"(?P<v>-----BEGIN PRIVATE KEY-----\\n' + _B64 + "{40,})"),
    ),
    Rule(
        "private-key",
        "a private key (PEM block)",
        # The header followed by key material (on the next lines, or after a \n escape in JSON):
        # a sentence that only names the header is no key.
        re.compile(
            rf"(?P<v>{_PEM_HEADER}(?:\s|\\n|\\r)+(?:[A-Za-z-]+: [^\n]*(?:\s|\\n)+)*{_B64}{{40,}})"
        ),
    ),
    Rule(
        "aws-access-key-id",
        "an AWS access key id (AKIA..., ASIA...)",
        re.compile(r"(?<![A-Z0-9])(?P<v>(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})(?![A-Z0-9])"),
    ),
    Rule(
        "aws-secret-access-key",
        "an AWS secret access key assigned to aws_secret_access_key or similar",
        re.compile(
            r"(?i:aws_?secret_?(?:access_?)?key|secretaccesskey)[\"']?\s*(?::=|=>|=|:)\s*"
            r"[\"']?(?P<v>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
        ),
        _aws_secret_key,
    ),
    Rule(
        "azure-storage-key",
        "an Azure storage account key (AccountKey=... in a connection string)",
        re.compile(r"(?i:AccountKey)=(?P<v>[A-Za-z0-9+/]{86}==)"),
    ),
    Rule(
        "github-token",
        "a GitHub token (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)",
        re.compile(
            r"(?<![A-Za-z0-9_])(?P<v>(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_"
            r"[A-Za-z0-9]{59}))(?![A-Za-z0-9_])"
        ),
    ),
    Rule(
        "gitlab-token",
        "a GitLab personal access token (glpat-)",
        re.compile(r"(?<![A-Za-z0-9_-])(?P<v>glpat-[A-Za-z0-9_-]{20,})"),
    ),
    Rule(
        "slack-token",
        "a Slack token (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-)",
        re.compile(r"(?<![A-Za-z0-9])(?P<v>xox[abposr]-[0-9]{6,}-[0-9A-Za-z-]{10,})"),
    ),
    Rule(
        "slack-webhook",
        "a Slack incoming webhook URL (the URL is the credential)",
        re.compile(
            r"(?P<v>https://hooks\.slack\.com/(?:services|workflows|triggers)/"
            r"[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/[A-Za-z0-9_-]{16,})"
        ),
    ),
    Rule(
        "stripe-key",
        "a Stripe live secret or restricted key (sk_live_, rk_live_)",
        re.compile(r"(?<![A-Za-z0-9_])(?P<v>[sr]k_live_[0-9A-Za-z]{20,})"),
    ),
    Rule(
        "openai-key",
        "an OpenAI API key (sk-...)",
        re.compile(
            r"(?<![A-Za-z0-9_-])(?P<v>sk-(?:(?:proj|svcacct|admin)-)?[A-Za-z0-9_-]{16,}T3BlbkFJ"
            r"[A-Za-z0-9_-]{16,}|sk-[A-Za-z0-9]{48})(?![A-Za-z0-9_-])"
        ),
    ),
    Rule(
        "npm-token",
        "an npm access token (npm_)",
        re.compile(r"(?<![A-Za-z0-9_])(?P<v>npm_[A-Za-z0-9]{36})(?![A-Za-z0-9])"),
    ),
    Rule(
        "sendgrid-key",
        "a SendGrid API key (SG.)",
        re.compile(r"(?<![A-Za-z0-9])(?P<v>SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})"),
    ),
    Rule(
        "twilio-api-key",
        "a Twilio API key SID (SK + 32 hex)",
        re.compile(r"(?<![A-Za-z0-9])(?P<v>SK[0-9a-f]{32})(?![A-Za-z0-9])"),
    ),
    Rule(
        "jwt",
        "a signed JSON Web Token",
        re.compile(
            r"(?<![A-Za-z0-9_-])(?P<v>eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."
            r"[A-Za-z0-9_-]{16,})"
        ),
    ),
    Rule(
        "url-credentials",
        "a password inside a URL (scheme://user:password@host)",
        re.compile(
            r"\b[A-Za-z][A-Za-z0-9+.-]*://(?P<user>[^\s:/@'\"`<>]*):(?P<v>[^\s/@'\"`<>]+)@"
            r"[A-Za-z0-9\[]"
        ),
        lambda match, value: value != match.group("user") and not _url_placeholder(value),
    ),
    Rule(
        "assigned-secret",
        "a high-entropy value (or any password) assigned to a name like *_KEY, *_SECRET, "
        "*_TOKEN, PASSWORD, *_PASSWORD",
        re.compile(
            r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)[\"']?\s*(?::=|=>|==|=|:)\s*"
            r"(?:(?P<q>[\"'`])(?P<v>[^\"'`\s\\]+)(?P=q)|(?P<bare>(?<![\"'`])[^\s\"'`,;#\\()\[\]{}]+)\s*$)",
            re.MULTILINE,
        ),
        _assigned_secret,
    ),
)
RULE_IDS = tuple(rule.id for rule in RULES)


# --- placeholders, allow comments --------------------------------------------------------------

_PLACEHOLDER_WORDS = (
    "example",
    "changeme",
    "change-me",
    "change_me",
    "placeholder",
    "your",
    "xxxx",
    "dummy",
    "redacted",
    "sample",
    "notreal",
    "not-a-real",
    "****",
    "...",
    "…",
)
# Passwords that every dictionary attack tries first: in a URL or assigned to PASSWORD they are
# demo values (documentation, tests, a local database), not something a leak would give away.
DEMO_PASSWORDS = frozenset(
    {
        "password",
        "passw0rd",
        "p@ssw0rd",
        "pass",
        "p@ss",
        "passwd",
        "pwd",
        "pw",
        "secret",
        "s3cret",
        "s3cr3t",
        "sekrit",
        "hunter2",
        "letmein",
        "admin",
        "root",
        "test",
        "postgres",
        "mysql",
        "guest",
        "changeit",
        "token",
        "x",
        "***",
    }
)


def is_placeholder(value: str) -> bool:
    """A value written to be replaced: <...>, ${VAR}, {{ var }}, {var}, %(var)s, changeme, xxx,
    EXAMPLE."""
    lowered = value.lower()
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        return True
    if re.search(r"<[^>]*>|\$\{|\$\(|\{\{|%\(|^\$[A-Za-z_]|\{[A-Za-z_][\w.]*\}", value):
        return True
    # 0000000, aaaaaaa, 1234567890: not chosen at random.
    core = re.sub(r"[^A-Za-z0-9]", "", value)
    return len(set(core.lower())) <= 3 or core.lower() in "0123456789abcdefghijklmnopqrstuvwxyz"


def _url_placeholder(password: str) -> bool:
    from urllib.parse import unquote

    password = unquote(password)
    return password.lower() in DEMO_PASSWORDS or _demo_value(password) or is_placeholder(password)


_ALLOW = re.compile(r"conveyor:allow-secret(?!-)(?P<reason>\s+because\s+\S.*)?")
_ALLOW_FILE = re.compile(r"conveyor:allow-secret-file\s+because\s+\S")
ALLOW_FILE_LINES = 10
# Lock files are digests and URLs of packages: hex everywhere, no secrets of ours.
_LOCK_FILES = re.compile(
    r"(?:^|/)(?:package-lock\.json|npm-shrinkwrap\.json|yarn\.lock|pnpm-lock\.yaml|"
    r"poetry\.lock|uv\.lock|Pipfile\.lock|Cargo\.lock|go\.sum|composer\.lock|Gemfile\.lock|"
    r"[^/]*\.lock)$"
)


def skipped(path: str) -> bool:
    """Files whose content is not written by people: lock files."""
    return bool(_LOCK_FILES.search(PurePath(path).as_posix()))


def mask(value: str) -> str:
    """Enough of a value to recognise which one it is, never enough to use it."""
    header = re.match(_PEM_HEADER, value)
    if header:
        return header.group() + "*" * 8
    shown = 4 if len(value) >= 16 else 2 if len(value) >= 8 else 0
    return value[:shown] + "*" * 8


# --- scanning ----------------------------------------------------------------------------------


def scan_text(path: str, text: str) -> list[Finding]:
    """Every likely secret in `text` (the content of `path`), minus the allowed ones."""
    if skipped(path):
        return []
    lines = text.splitlines()
    if any(_ALLOW_FILE.search(line) for line in lines[:ALLOW_FILE_LINES]):
        return []
    starts = _line_starts(text)
    bare = PurePath(path).suffix.lower() not in CODE_SUFFIXES
    findings: list[Finding] = []
    for number, rule, value in _matches(text, starts, bare):
        line = lines[number - 1] if number <= len(lines) else ""
        before = lines[number - 2] if number >= 2 else ""
        if _allowed(line) or (_comment_only(before) and _allowed(before)):
            continue
        excerpt = _excerpt(line, value)
        if _ALLOW.search(line) or _ALLOW.search(before):
            excerpt += "  (the allow comment needs a reason: `conveyor:allow-secret because ...`)"
        findings.append(Finding(path, number, rule.id, excerpt))
    return findings


# Programming languages: there `name = value` without quotes is an expression, not a literal.
CODE_SUFFIXES = frozenset(
    {".py", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".go", ".rb", ".java", ".kt"}
    | {".kts", ".scala", ".rs", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs", ".php", ".swift"}
    | {".m", ".lua", ".pl", ".ex", ".exs", ".erl", ".hs", ".dart", ".groovy", ".r", ".jl"}
)


def _matches(
    text: str, starts: Sequence[int], bare: bool = True
) -> Iterator[tuple[int, Rule, str]]:
    """(line, rule, value) of each match, the first rule winning where two overlap. `bare`:
    whether an unquoted `NAME=value` line counts (dotenv, YAML, INI, shell; not source code)."""
    taken: list[tuple[int, int]] = []
    for rule in RULES:
        for match in rule.pattern.finditer(text):
            group = "bare" if "bare" in match.re.groupindex and match.group("bare") else "v"
            value = match.group(group)
            if value is None or is_placeholder(value):
                continue
            span = match.span(group)
            if any(span[0] < end and start < span[1] for start, end in taken):
                continue
            if group == "bare" and not (bare and _bare_allowed(text, starts, match)):
                continue
            if not rule.accept(match, value):
                continue
            taken.append(span)
            yield _line_of(starts, span[0]), rule, value


def _bare_allowed(text: str, starts: Sequence[int], match: re.Match[str]) -> bool:
    # An unquoted value counts only as the whole of a line `NAME=value` or `name: value` (a
    # dotenv file, YAML, INI): in source code it is an expression (a call, a variable).
    line_start = starts[_line_of(starts, match.start()) - 1]
    head = text[line_start : match.start("name")]
    return re.fullmatch(r"\s*(?:export\s+|-\s+)?", head) is not None


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(index + 1 for index, char in enumerate(text) if char == "\n")
    return starts


def _line_of(starts: Sequence[int], offset: int) -> int:
    low, high = 0, len(starts) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if starts[middle] <= offset:
            low = middle
        else:
            high = middle - 1
    return low + 1


def _allowed(line: str) -> bool:
    match = _ALLOW.search(line)
    return bool(match and match.group("reason"))


def _comment_only(line: str) -> bool:
    return line.lstrip().startswith(("#", "//", "--", ";", "/*", "*", "<!--", "%", "rem "))


EXCERPT_WIDTH = 100


def _excerpt(line: str, value: str) -> str:
    # A private key spans lines: its first line is what this line holds of it.
    value = value if value in line else value.splitlines()[0]
    shown = line.strip().replace(value, mask(value))
    if len(shown) <= EXCERPT_WIDTH:
        return shown
    at = max(0, shown.find(mask(value)) - EXCERPT_WIDTH // 3)
    return ("…" if at else "") + shown[at : at + EXCERPT_WIDTH] + "…"


# --- a loaded configuration --------------------------------------------------------------------


def scan_config_values(config: Config, text: str | None = None) -> list[Finding]:
    """Literal credentials among the values of a loaded conveyor.toml.

    Looks at every string (services' env, notification URLs, commands, environments' overrides)
    as the value of its key: a token, a private key or a URL with a password anywhere, and a
    high-entropy value assigned to a name like *_KEY / *_TOKEN / PASSWORD. `text` is the file's
    content, to give each finding its line (without it, findings name the file and key only).
    Allow comments in the file are honoured when the text is given.
    """
    from conveyor.config.loader import KeyLocator

    locator = KeyLocator(text) if text is not None else None
    lines = text.splitlines() if text is not None else []
    data = config.model_dump(mode="python", exclude={"source"})
    file = str(config.source)
    findings: list[Finding] = []
    for path, value in _strings(data, ()):
        name = path[-1]
        line = locator.line_of(path) if locator is not None else None
        if line is not None and 0 < line <= len(lines):
            before = lines[line - 2] if line >= 2 else ""
            if _allowed(lines[line - 1]) or (_comment_only(before) and _allowed(before)):
                continue
        assignment = f"{name} = {_quote(value)}"
        for _number, rule, found in _matches(assignment, [0]):
            key = ".".join(path)
            excerpt = f"{key} = {_quote(value.replace(found, mask(found)))}"
            findings.append(Finding(file, line, rule.id, _excerpt(excerpt, found), key=key))
    return findings


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _strings(data: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, (*path, str(key)))
    elif isinstance(data, list | tuple):
        for index, value in enumerate(data):
            yield from _strings(value, (*path, str(index)))
