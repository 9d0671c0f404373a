"""The secret scanner's rules (conveyor.secrets.scan), over text: one planted secret per rule is
found, its safe twin is not, the value never shows in a finding, allow comments work.

Every planted value is made at run time (a prefix joined to random characters), so that this file
holds none and no scanner, ours included, finds one in it.
"""

from __future__ import annotations

import base64
import json
import random
import string

import pytest

from conveyor.secrets.scan import (
    RULE_IDS,
    Finding,
    is_placeholder,
    mask,
    scan_text,
    shannon_entropy,
)

_rng = random.Random(11)
ALNUM = string.ascii_letters + string.digits
UPPER = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def b64url(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def pem(kind: str) -> str:
    body = "\n".join(rand(64, B64) for _ in range(4))
    label = f"{kind} PRIVATE KEY" if kind else "PRIVATE KEY"
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def gcp_json() -> str:
    key = "-----BEGIN PRIVATE KEY-----\n" + rand(120, B64) + "\n-----END PRIVATE KEY-----\n"
    account = {"type": "service_account", "project_id": "shop", "private_key": key}
    return json.dumps(account, indent=2)


# (rule, file name, text holding exactly one secret of that rule, the secret)
def planted() -> list[tuple[str, str, str, str]]:
    cases: list[tuple[str, str, str, str]] = []

    def add(rule: str, path: str, secret: str, line: str = "{}") -> None:
        cases.append((rule, path, line.format(secret), secret))

    rsa = pem("RSA")
    cases.append(("private-key", "deploy/id_rsa", rsa, rsa.splitlines()[1]))
    openssh = pem("OPENSSH")
    cases.append(("private-key", "keys/ci.key", openssh, openssh.splitlines()[1]))
    account = gcp_json()
    secret = json.loads(account)["private_key"].splitlines()[1]
    cases.append(("gcp-service-account-key", "sa.json", account, secret))
    add("aws-access-key-id", "deploy.sh", "AK" + "IA" + rand(16, UPPER), "export AWS_KEY_ID={}\n")
    add("aws-access-key-id", "creds.ini", "AS" + "IA" + rand(16, UPPER), "key_id = {}\n")
    add(
        "aws-secret-access-key",
        "creds.ini",
        rand(40, B64),
        "[default]\naws_" + "secret_access_key = {}\n",
    )
    add(
        "azure-storage-key",
        "appsettings.json",
        rand(86, B64) + "==",
        '{{"Storage": "DefaultEndpointsProtocol=https;AccountName=shop;Account'
        + 'Key={};EndpointSuffix=core.windows.net"}}\n',
    )
    add("github-token", "ci.yml", "gh" + "p_" + rand(36), "token: {}\n")
    add("github-token", "setup.py", "gh" + "o_" + rand(36), 'auth = "{}"\n')
    add("github-token", "a.txt", "github" + "_pat_" + rand(22) + "_" + rand(59), "{}\n")
    add("gitlab-token", "Makefile", "gl" + "pat-" + rand(20), "push: TOKEN={} make\n")
    add("slack-token", "bot.js", "xo" + "xb-" + rand(12, "123456789") + "-" + rand(24), "t('{}')\n")
    add("slack-token", "bot.js", "xo" + "xp-" + rand(10, "123456789") + "-" + rand(30), "t('{}')\n")
    add(
        "slack-webhook",
        "notify.py",
        "https://hooks."
        + "slack.com/services/T"
        + rand(8, UPPER)
        + "/B"
        + rand(8, UPPER)
        + "/"
        + rand(24),
        'post("{}", body)\n',
    )
    add("stripe-key", "pay.rb", "sk" + "_live_" + rand(24), "Stripe.api = '{}'\n")
    add("stripe-key", "pay.rb", "rk" + "_live_" + rand(24), "restricted('{}')\n")
    add(
        "openai-key",
        "ai.py",
        "sk" + "-proj-" + rand(20) + "T3Blbk" + "FJ" + rand(20),
        'client = OpenAI(api="{}")\n',
    )
    add("openai-key", "ai.py", "sk" + "-" + rand(48), 'client = OpenAI(api="{}")\n')
    add("npm-token", ".npmrc", "np" + "m_" + rand(36), "//registry.npmjs.org/:_authToken={}\n")
    add("sendgrid-key", "mail.go", "S" + "G." + rand(22) + "." + rand(43), 'key := "{}"\n')
    add("twilio-api-key", "sms.php", "S" + "K" + rand(32, HEX), "$client = new Client('{}');\n")
    jwt = ".".join(
        [b64url({"alg": "HS256", "typ": "JWT"}), b64url({"sub": "ci", "n": rand(8)}), rand(43)]
    )
    add("jwt", "request.http", jwt, "Authorization: Bearer {}\n")
    add(
        "url-credentials",
        "docker-compose.yml",
        rand(18),
        "    DATABASE: postgres://shop:{}@db.internal:5432/shop\n",
    )
    add("assigned-secret", ".env", rand(32), "API_TOKEN={}\n")
    add("assigned-secret", ".env.production", rand(40, B64), "export SIGNING_SECRET='{}'\n")
    add("assigned-secret", "settings.py", rand(50), 'SECRET_KEY = "{}"\n')
    add("assigned-secret", "config.yml", "Tr0ub4dor&3", "db:\n  password: {}\n")
    add("assigned-secret", "client.ts", rand(24), 'const apiKey = "{}";\n')
    add("assigned-secret", "conveyor.toml", rand(32, HEX), '[services.web.env]\nHMAC_KEY = "{}"\n')
    return cases


PLANTED = planted()


def test_every_rule_has_a_planted_case() -> None:
    assert {rule for rule, *_ in PLANTED} == set(RULE_IDS)


@pytest.mark.parametrize(
    ("rule", "path", "text", "secret"),
    PLANTED,
    ids=[f"{rule}-{path}-{index}" for index, (rule, path, *_) in enumerate(PLANTED)],
)
def test_planted_secret_is_found_once_and_masked(
    rule: str, path: str, text: str, secret: str
) -> None:
    found = scan_text(path, text)
    assert [(f.rule, f.file) for f in found] == [(rule, path)]
    (finding,) = found
    line = text.splitlines()[finding.line - 1] if finding.line else ""
    assert secret[:12] in line or secret in text  # the line the secret starts on
    assert secret not in str(finding) and secret not in json.dumps(finding.to_json())
    # Not even a long piece of it: at most 4 characters of the value are shown.
    assert secret[4:12] not in finding.excerpt


SAFE = [
    ("public key", "k.pem", "-----BEGIN PUBLIC KEY-----\n" + rand(64, B64) + "\n"),
    ("certificate", "c.pem", "-----BEGIN CERTIFICATE-----\n" + rand(64, B64) + "\n"),
    ("prose naming the header", "README.md", "Paste the -----BEGIN PRIVATE KEY----- block.\n"),
    ("AWS's documented example", "doc.md", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n"),
    (
        "AWS example secret",
        "doc.md",
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
    ),
    ("placeholder token", "a.md", "token: " + "gh" + "p_" + "x" * 36 + "\n"),
    ("Stripe test key", "pay.rb", "Stripe.api = '" + "sk" + "_test_" + rand(24) + "'\n"),
    ("Stripe publishable", ".env", "STRIPE_PUBLISHABLE_KEY=" + "pk" + "_live_" + rand(24) + "\n"),
    (
        "slack placeholder",
        "a.toml",
        'url = "https://hooks.' + 'slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"\n',
    ),
    ("url with a variable", ".env", "DATABASE_URL=postgres://shop:${DB_PASSWORD}@db/shop\n"),
    ("url with a placeholder", "a.md", "postgres://user:<password>@host/db\n"),
    ("url with the word password", "a.md", "mysql://root:password@127.0.0.1/db\n"),
    ("url without a password", "a.toml", 'url = "postgresql://app@db.internal/shop"\n'),
    ("url with a port only", "a.py", 'URL = "http://127.0.0.1:8080/health"\n'),
    ("variable read from env", "settings.py", 'SECRET_KEY = os.environ["SECRET_KEY"]\n'),
    ("call in source", "app.py", "TOKEN = make_token(" + rand(20) + ")\n"),
    ("bare name in source", "app.py", "API_TOKEN = " + rand(20, string.ascii_lowercase) + "\n"),
    ("dotted setting", "app.py", 'key = "settings.SECRET_KEY"\n'),
    ("placeholder in angle brackets", "a.md", 'API_KEY = "<your api key>"\n'),
    ("changeme", ".env", "ADMIN_PASSWORD=changeme\n"),
    ("template", "a.yml", "token: ${{ secrets.GITHUB_TOKEN }}\n"),
    ("jinja", "a.j2", 'password: "{{ vault_db_password }}"\n'),
    ("empty", ".env", 'DB_PASSWORD=""\n'),
    ("a path", ".env", "TLS_KEY=/etc/ssl/private/shop.key\n"),
    ("a file name", "a.toml", 'signing_key = "keys/signing.pem"\n'),
    ("a variable name", "a.toml", 'url_secret = "SLACK_WEBHOOK_URL"\n'),
    (
        "UUID as an id",
        "a.py",
        'IDEMPOTENCY_KEY = "' + "3f2b8c1e-9a4d-4e7f-b6c2-0d1e2f3a4b5c" + '"\n',
    ),
    ("UUID under a plain KEY", ".env", "LICENSE_KEY=3f2b8c1e-9a4d-4e7f-b6c2-0d1e2f3a4b5c\n"),
    ("low entropy", ".env", "CACHE_TOKEN=aaaaaaaabbbbbbbbaaaa\n"),
    ("short", ".env", "API_KEY=" + rand(10) + "\n"),
    ("public key name", ".env", "VAPID_PUBLIC_KEY=" + rand(60) + "\n"),
    ("a sentence-like demo value", "t.py", 'SECRET = "s3cr3t-value-never-printed"\n'),
    ("demo password", "t.py", 'DB_PASSWORD = "hunter2-long"\n'),
    ("hex digest in a lock file", "poetry.lock", 'content-hash = "' + rand(64, HEX) + '"\n'),
    (
        "token in a lock file",
        "package-lock.json",
        '"integrity": "' + "gh" + "p_" + rand(36) + '"\n',
    ),
    ("sha256 digest", "a.txt", "sha256:" + rand(64, HEX) + "\n"),
    ("git commit", "a.md", "commit " + rand(40, HEX) + "\n"),
    (
        "no signature JWT",
        "a.md",
        b64url({"alg": "none"}) + "." + b64url({"sub": "x1234567"}) + ".\n",
    ),
]


@pytest.mark.parametrize(("what", "path", "text"), SAFE, ids=[case[0] for case in SAFE])
def test_safe_twin_is_not_found(what: str, path: str, text: str) -> None:
    assert scan_text(path, text) == []


def test_allow_comment_on_the_line_or_the_line_before() -> None:
    token = "gh" + "p_" + rand(36)
    same = f'TOKEN = "{token}"  # conveyor:allow-secret because it is revoked, kept for the test\n'
    before = f"# conveyor:allow-secret because a fixture of the parser\nTOKEN = '{token}'\n"
    assert scan_text("a.py", same) == []
    assert scan_text("a.py", before) == []
    # Two lines above is not "the line before"; a code line's comment is for its own line.
    far = f"# conveyor:allow-secret because reasons\n\nTOKEN = '{token}'\n"
    code_before = f"x = 1  # conveyor:allow-secret because x\nTOKEN = '{token}'\n"
    assert len(scan_text("a.py", far)) == 1
    assert len(scan_text("a.py", code_before)) == 1


def test_allow_comment_needs_a_reason() -> None:
    token = "gh" + "p_" + rand(36)
    (finding,) = scan_text("a.py", f'TOKEN = "{token}"  # conveyor:allow-secret\n')
    assert "needs a reason" in finding.excerpt
    assert len(scan_text("a.py", f'TOKEN = "{token}"  # conveyor:allow-secret because\n')) == 1


def test_allow_file_marker_in_the_first_lines() -> None:
    token = "gh" + "p_" + rand(36)
    marked = f"# conveyor:allow-secret-file because recorded responses\n\nT = '{token}'\n"
    assert scan_text("fixture.py", marked) == []
    late = "\n" * 12 + marked
    assert len(scan_text("fixture.py", late)) == 1


def test_two_rules_on_one_value_give_one_finding() -> None:
    # A Slack webhook is also a URL; a GitHub token assigned to GITHUB_TOKEN is also assigned.
    token = "gh" + "p_" + rand(36)
    (finding,) = scan_text(".env", f"GITHUB_TOKEN={token}\n")
    assert finding.rule == "github-token"


def test_lines_are_counted_from_one() -> None:
    token = "np" + "m_" + rand(36)
    (finding,) = scan_text("x", f"a\nb\n\nkey: {token}\n")
    assert finding.line == 4
    assert str(finding).startswith("x:4: npm-token: key: npm_")


def test_mask_shows_at_most_four_characters() -> None:
    assert mask("abcdefghijklmnopqrstuvwxyz") == "abcd********"
    assert mask("abcdefghij") == "ab********"
    assert mask("abc") == "********"
    header = "-----BEGIN RSA PRIVATE KEY-----"
    assert mask(header + "\nMIIE") == header + "********"


def test_long_lines_are_cut_around_the_value() -> None:
    token = "gh" + "p_" + rand(36)
    (finding,) = scan_text("min.js", "a" * 500 + f' t="{token}" ' + "b" * 500)
    assert len(finding.excerpt) < 120 and "ghp_****" in finding.excerpt


def test_placeholders_and_entropy() -> None:
    for value in ("changeme", "<token>", "${TOKEN}", "{{ token }}", "%(token)s", "xxxxxxxx"):
        assert is_placeholder(value), value
    assert is_placeholder("0000000000000000") and is_placeholder("123456789")
    assert not is_placeholder(rand(32))
    assert shannon_entropy("") == 0.0 and shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0


def test_finding_json() -> None:
    finding = Finding("a.env", 3, "npm-token", "T=npm_********")
    assert finding.to_json() == {
        "file": "a.env",
        "line": 3,
        "rule": "npm-token",
        "key": None,
        "excerpt": "T=npm_********",
    }
