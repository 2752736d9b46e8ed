"""Who may do what: tokens, passwords, throttling, and each user's own jobs."""

from __future__ import annotations

import base64
import hmac
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fakes import InlineIO, ManualThreads
from test_api import JSON, Client

from cmdd.accounts import Accounts
from cmdd.api import CmddAPI
from cmdd.auth import BearerToken, IPrincipal, parse_authorization
from cmdd.cli import main as cmdd_command
from cmdd.errors import ClientError
from cmdd.tokens import TokenBook, issue
from cmdd.users import parse_users, verify_password, write_users


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(tmp_path, max_running=4, max_queued=100)


def basic(name: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def routes() -> list[tuple[str, str]]:
    """Every (method, concrete path) in the app's routing table."""
    out = []
    for rule in CmddAPI.app.url_map.iter_rules():
        path = re.sub(r"<(\w+:)?job_id>", "1", rule.rule)
        path = path.replace("<stream>", "stdout").replace("<token_id>", "abc")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, path))
    return out


def test_routing_table_is_walked() -> None:
    """The walk below sees the routes (so it cannot pass by seeing none)."""
    found = routes()
    assert ("POST", "/api/jobs") in found and ("GET", "/healthz") in found
    assert len(found) >= 15


@pytest.mark.parametrize(("method", "path"), routes())
def test_every_route_but_healthz_needs_a_token(client: Client, method: str, path: str) -> None:
    """Without a token every route answers 401 + WWW-Authenticate: Bearer; only
    /healthz and /readyz are public. A route added later without auth fails here."""
    client.token = None
    response, content = client.request(method, path, raw=b"{}", headers=JSON)
    if path in ("/healthz", "/readyz"):
        assert response.code == 200
        return
    assert response.code == 401, (method, path, content)
    assert response.headers.getRawHeaders("www-authenticate") == ['Bearer realm="cmdd"']


def test_unknown_routes_do_not_leak_without_a_token(client: Client) -> None:
    """Even a 404 needs a token: the route table is not revealed to strangers."""
    client.token = None
    code, body, _ = client.json("GET", "/api/secret-admin-thing")
    assert code == 401 and body["error"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "header", ["Bearer nope", "Bearer cmdd_0123456789abcdef_" + "A" * 43, "Token abc", "Bearer"]
)
def test_bad_tokens_are_401(client: Client, header: str) -> None:
    """A wrong, malformed or unknown token is refused with a JSON 401."""
    client.token = None
    code, body, headers = client.json("GET", "/api/jobs", headers={"Authorization": header})
    assert code == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    assert headers.getRawHeaders("www-authenticate") == ['Bearer realm="cmdd"']


def test_password_gives_a_token_that_works_until_revoked(client: Client) -> None:
    """POST /api/tokens with Basic → 201 with the token once; listing never shows
    secrets; after DELETE the token is refused at once."""
    client.add_user("alice", password="pw-alice")
    client.token = None
    code, created, headers = client.json(
        "POST", "/api/tokens", {"expires_in": 600, "description": "ci"},
        headers=basic("alice", "pw-alice"),
    )
    assert code == 201 and created["owner"] == "alice" and created["description"] == "ci"
    assert created["token"].startswith("cmdd_") and len(created["token"]) >= 60
    assert headers.getRawHeaders("cache-control") == ["no-store"]
    client.token = created["token"]
    code, listing, _ = client.json("GET", "/api/tokens")
    assert code == 200 and created["id"] in [t["id"] for t in listing["tokens"]]
    assert created["token"] not in str(listing) and "hash" not in str(listing)
    response, _ = client.request("DELETE", f"/api/tokens/{created['id']}")
    assert response.code == 204
    code, _body, _ = client.json("GET", "/api/jobs")
    assert code == 401


def test_tokens_expire(client: Client) -> None:
    """A token stops working when it expires."""
    client.add_user("alice", password="pw")
    client.token = None
    _, created, _ = client.json("POST", "/api/tokens", {"expires_in": 10},
                                headers=basic("alice", "pw"))
    client.token = created["token"]
    assert client.json("GET", "/api/jobs")[0] == 200
    client.clock.advance(11)
    assert client.json("GET", "/api/jobs")[0] == 401


def test_token_request_limits(client: Client) -> None:
    """Token lifetimes are bounded and the body is checked."""
    code, body, _ = client.json("POST", "/api/tokens", {"expires_in": 10**9})
    assert code == 400 and body["error"]["code"] == "INVALID_EXPIRES_IN"
    code, body, _ = client.json("POST", "/api/tokens", {"scope": "all"})
    assert code == 400 and body["error"]["code"] == "INVALID_TOKEN_REQUEST"


def test_passwords_only_where_tokens_are_made(client: Client) -> None:
    """Basic credentials are refused on job routes: use a bearer token."""
    client.add_user("alice", password="pw")
    client.token = None
    code, body, _ = client.json("GET", "/api/jobs", headers=basic("alice", "pw"))
    assert code == 401 and "bearer" in body["error"]["message"]


def test_wrong_password_is_401_basic(client: Client) -> None:
    """A wrong password answers 401 with WWW-Authenticate: Basic."""
    client.add_user("alice", password="pw")
    client.token = None
    code, _body, headers = client.json("POST", "/api/tokens", raw=b"",
                                      headers=basic("alice", "nope"))
    assert code == 401
    assert headers.getRawHeaders("www-authenticate") == ['Basic realm="cmdd"']


def token_request(client: Client, name: str, password: str) -> tuple[int, Any, Any]:
    """POST /api/tokens with HTTP Basic (and no bearer token)."""
    client.token = None
    return client.json("POST", "/api/tokens", raw=b"", headers=basic(name, password))


def test_password_guessing_backs_off_then_is_forgiven(client: Client) -> None:
    """Five wrong passwords for a user cost nothing; then each further try waits
    1, 2, 4 ... seconds (429 + Retry-After, even for the right password); after
    the wait the right password works and clears the count."""
    client.add_user("alice", password="right")
    for _ in range(5):
        assert token_request(client, "alice", "x")[0] == 401
    code, body, headers = token_request(client, "alice", "right")
    assert code == 429 and body["error"]["code"] == "TOO_MANY_FAILURES"
    assert headers.getRawHeaders("retry-after") == ["1"]
    for delay in (1, 2, 4, 8):
        client.clock.advance(delay)
        assert token_request(client, "alice", "x")[0] == 401, "one try after each wait"
        code, _, headers = token_request(client, "alice", "x")
        assert code == 429 and headers.getRawHeaders("retry-after") == [str(2 * delay)]
    client.clock.advance(16)
    assert token_request(client, "alice", "right")[0] == 201
    for _ in range(5):
        assert token_request(client, "alice", "x")[0] == 401, "a success cleared the count"


def test_throttled_answers_have_standard_reason_phrases(tmp_path: Path) -> None:
    """429 and 503 status lines carry "Too Many Requests" and "Service
    Unavailable", not "Unknown Status"."""
    client = Client(tmp_path, max_running=1, max_queued=1)
    codes = [client.request("POST", "/api/jobs", {"command": "true"})[0] for _ in range(3)]
    assert codes[0].code == 202 and codes[-1].code == 503
    assert codes[-1].phrase == b"Service Unavailable"
    client.add_user("alice", password="right")
    client.token = None
    for _ in range(20):
        response, _ = client.request("POST", "/api/tokens", raw=b"", headers=basic("alice", "x"))
        if response.code == 429:
            break
    assert (response.code, response.phrase) == (429, b"Too Many Requests")


def test_bad_tokens_never_lock_out_valid_tokens_or_passwords(client: Client) -> None:
    """However many bad bearer tokens come from an address, they stay 401 and a
    valid token or a right password from the same address still works."""
    client.add_user("bob", password="pw-bob")
    for i in range(30):
        code, _, _ = client.json(
            "GET", "/api/jobs", headers={"Authorization": f"Bearer cmdd_guess_{i}"}
        )
        assert code == 401
    client.token = client.admin_token
    assert client.json("GET", "/api/jobs")[0] == 200
    assert token_request(client, "bob", "pw-bob")[0] == 201


def test_one_users_failures_do_not_lock_out_others(client: Client) -> None:
    """A client hammering alice's account from an address gets 429 for alice
    only: bob's right password and every valid token from that address work."""
    client.add_user("alice", password="right")
    client.add_user("bob", password="pw-bob")
    codes = [token_request(client, "alice", "wrong")[0] for _ in range(20)]
    assert codes.count(401) == 5 and codes.count(429) == 15
    assert token_request(client, "bob", "pw-bob")[0] == 201
    client.token = client.admin_token
    assert client.json("GET", "/api/jobs")[0] == 200
    assert token_request(client, "nobody", "guess")[0] == 401, "unknown names count apart"


def test_parallel_password_guesses_are_counted_while_in_flight(tmp_path: Path) -> None:
    """200 password guesses sent at once cannot all be checked: attempts are
    counted from before the (threaded) scrypt check, so at most five run and
    the rest get 429 at once."""
    threads = ManualThreads()
    client = Client(tmp_path, blocking=threads.run, max_running=4, max_queued=100)
    client.add_user("alice", password="right")
    responses: list[Any] = []
    for i in range(201):
        password = "right" if i == 100 else f"guess-{i}"
        d = client.treq.request(
            "POST", "http://cmdd.test/api/tokens", data=b"", headers=basic("alice", password)
        )
        d.addCallback(responses.append)
    client.treq.flush()
    checked = threads.run_all()
    client.treq.flush()
    codes = [response.code for response in responses]
    assert len(codes) == 201
    assert checked <= 5 and codes.count(401) + codes.count(201) == checked
    assert codes.count(429) == 201 - checked
    assert codes.count(201) == 0, "the right password was not among the first five"


def test_users_see_only_their_own_jobs(client: Client) -> None:
    """Each user lists and reads only their jobs (others' ids are 404); the admin
    sees all and can filter by owner; cancel and delete are audited."""
    alice = client.add_user("alice")
    bob = client.add_user("bob")
    client.token = alice
    client.json("POST", "/api/jobs", {"command": "true"})
    client.token = bob
    client.json("POST", "/api/jobs", {"command": "true"})
    for path, key in (("/api/jobs", "jobs"), ("/api/statuses", "statuses")):
        client.token = alice
        assert [j["id"] for j in client.json("GET", path)[1][key]] == [1]
        client.token = bob
        assert [j["id"] for j in client.json("GET", path)[1][key]] == [2]
        client.token = client.admin_token
        assert [j["id"] for j in client.json("GET", path)[1][key]] == [2, 1]
    client.token = bob
    for method, path in (("GET", "/api/jobs/1"), ("GET", "/api/statuses/1"),
                         ("GET", "/api/results/1"), ("GET", "/api/jobs/1/output/stdout"),
                         ("DELETE", "/api/jobs/1")):
        code, body, _ = client.json(method, path)
        assert code == 404 and body["error"]["code"] == "JOB_NOT_FOUND", (method, path)
    code, body, _ = client.json("PATCH", "/api/jobs/1", {"status": "cancelled"})
    assert code == 404
    code, body, _ = client.json("GET", "/api/jobs?owner=alice")
    assert code == 403 and body["error"]["field"] == "owner"
    client.token = client.admin_token
    code, listing, _ = client.json("GET", "/api/jobs?owner=bob")
    assert [j["id"] for j in listing["jobs"]] == [2] and listing["jobs"][0]["owner"] == "bob"
    client.clock.advance(0)
    results: list[Any] = []
    d = client.treq.request("PATCH", "http://cmdd.test/api/jobs/1", data=b'{"status":"cancelled"}',
                            headers={**JSON, "Authorization": f"Bearer {client.admin_token}"})
    d.addCallback(client.treq.json_content).addCallback(results.append)
    client.executor.by_job(1).finish(None, signal=15)
    client.treq.flush()
    assert results[0]["cancelled_by"] == "admin" and results[0]["reason"] == "cancelled by admin"


def test_removed_user_tokens_stop_working(client: Client) -> None:
    """Removing a user makes its tokens fail at once (no restart needed)."""
    alice = client.add_user("alice")
    client.token = alice
    assert client.json("GET", "/api/jobs")[0] == 200
    users = dict(client.accounts.users())
    del users["alice"]
    write_users(client.accounts.users_path, users)
    client.accounts.reload_users_if_changed()
    assert client.json("GET", "/api/jobs")[0] == 401


def test_token_check_compares_fixed_length_digests(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret is compared with hmac.compare_digest over SHA-256 hex digests of
    equal length, for known and unknown ids alike, so a prefix match is not faster."""
    token, secret = issue("alice", 0.0, 100.0)
    book = TokenBook([token])
    calls: list[tuple[int, int]] = []
    real_compare = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr("cmdd.tokens.hmac.compare_digest", spy)
    assert book.check(secret, 1.0) == token
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert book.check(wrong, 1.0) is None
    assert book.check("cmdd_ffffffffffffffff_" + secret[-43:], 1.0) is None
    assert calls == [(64, 64)] * 3
    assert book.check(secret, 100.0) is None, "expired"


def test_tokens_are_stored_hashed_and_survive_restart(tmp_path: Path, client: Client) -> None:
    """The tokens file holds hashes, never secrets, and a restart keeps tokens."""
    client.add_user("alice", password="pw")
    client.token = None
    _, created, _ = client.json("POST", "/api/tokens", raw=b"", headers=basic("alice", "pw"))
    stored = (tmp_path / "tokens.json").read_text()
    assert created["id"] in stored and created["token"][-43:] not in stored
    assert (tmp_path / "tokens.json").stat().st_mode & 0o777 == 0o600
    restarted = Accounts(str(tmp_path), client.clock, client.accounts._run_io)
    restarted.load()
    assert restarted.book.check(created["token"], client.clock.seconds()) is not None


def test_first_start_creates_admin_and_token(tmp_path: Path) -> None:
    """A fresh data dir gets an admin user and a 0600 admin.token that works."""
    from twisted.internet.task import Clock

    accounts = Accounts(str(tmp_path), Clock(), InlineIO().run)
    accounts.load()
    token_file = tmp_path / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "users").stat().st_mode & 0o777 == 0o600
    users = parse_users((tmp_path / "users").read_text())
    assert users["admin"].role == "admin"
    checked = accounts.book.check(token_file.read_text().strip(), 1.0)
    assert checked is not None and checked.owner == "admin"


def test_authorization_header_parsing() -> None:
    """Malformed Basic credentials are a 401 that says so."""
    with pytest.raises(ClientError) as info:
        parse_authorization("Basic !!!", basic_allowed=True)
    assert info.value.status == 401 and "malformed" in info.value.message
    with pytest.raises(ClientError):
        parse_authorization("Basic " + base64.b64encode(b"no-colon").decode(), True)


def test_scrypt_hashes_verify() -> None:
    """Passwords are stored as salted scrypt hashes and verified in constant time."""
    from cmdd.users import hash_password

    encoded = hash_password("hunter2", n=2**4)
    assert encoded.startswith("scrypt$16$8$1$") and "hunter2" not in encoded
    assert verify_password("hunter2", encoded)
    assert not verify_password("hunter3", encoded)
    assert not verify_password("hunter2", "md5$whatever")
    assert hash_password("x", n=2**4) != hash_password("x", n=2**4), "salted"


# --- tokens die with their user ------------------------------------------------------


def user_command(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, *args: str, password: str = "pw"
) -> None:
    """Run C{cmdd user ARGS --data-dir DATA_DIR} (the password on stdin)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
    extra = ["--password-stdin"] if args[0] in ("add", "passwd") else []
    assert cmdd_command(["user", *args, *extra, "--data-dir", str(data_dir)]) == 0


def test_removed_then_readded_user_gets_none_of_the_old_tokens(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cmdd user remove alice` then `cmdd user add alice` (both before the
    daemon's next look at the users file) does not bring alice's old tokens
    back, and the tokens file no longer lists them."""
    user_command(monkeypatch, tmp_path, "add", "alice", password="old")
    client.accounts.reload_users()
    code, created, _ = token_request(client, "alice", "old")
    assert code == 201
    user_command(monkeypatch, tmp_path, "remove", "alice")
    user_command(monkeypatch, tmp_path, "add", "alice", password="new")
    client.accounts.reload_users_if_changed()
    client.token = created["token"]
    assert client.json("GET", "/api/jobs")[0] == 401
    assert created["id"] not in (tmp_path / "tokens.json").read_text()
    assert token_request(client, "alice", "new")[0] == 201, "the new alice gets new tokens"


def test_reload_drops_a_removed_users_tokens_from_the_file(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the daemon sees a user gone it forgets their tokens and rewrites
    tokens.json without them (other users' tokens stay)."""
    user_command(monkeypatch, tmp_path, "add", "alice")
    client.accounts.reload_users()
    _, created, _ = token_request(client, "alice", "pw")
    assert created["id"] in (tmp_path / "tokens.json").read_text()
    user_command(monkeypatch, tmp_path, "remove", "alice")
    client.accounts.reload_users_if_changed()
    stored = (tmp_path / "tokens.json").read_text()
    assert created["id"] not in stored
    assert client.accounts.book.get(created["id"]) is None
    client.token = client.admin_token
    assert client.json("GET", "/api/jobs")[0] == 200, "the admin's token is untouched"


def test_readded_admin_does_not_revive_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing and re-adding admin while the daemon is down kills the first
    start's admin.token; the restart rewrites tokens.json without it."""
    from twisted.internet.task import Clock

    accounts = Accounts(str(tmp_path), Clock(), InlineIO().run)
    accounts.load()
    secret = (tmp_path / "admin.token").read_text().strip()
    token_id = secret.split("_")[1]
    user_command(monkeypatch, tmp_path, "remove", "admin")
    user_command(monkeypatch, tmp_path, "add", "admin", "--role", "admin")
    restarted = Accounts(str(tmp_path), Clock(), InlineIO().run)
    restarted.load()
    assert restarted.book.check(secret, 1.0) is None
    assert token_id not in (tmp_path / "tokens.json").read_text()


def test_files_from_before_generations_and_parents_still_load(tmp_path: Path) -> None:
    """A users file of name:role:hash lines and a tokens file without
    generation or parent fields load, and their tokens keep working."""
    from twisted.internet.task import Clock

    from cmdd.auth import make_portal
    from cmdd.users import hash_password

    token, secret = issue("alice", 0.0, 3600.0)
    record = {k: v for k, v in token.to_json().items() if k not in ("generation", "parent")}
    (tmp_path / "tokens.json").write_text(json.dumps({"version": 1, "tokens": [record]}))
    (tmp_path / "users").write_text(f"alice:user:{hash_password('pw', n=2**4)}\n")
    accounts = Accounts(str(tmp_path), Clock(), InlineIO().run)
    accounts.load()
    assert accounts.users()["alice"].role == "user"
    portal = make_portal(accounts.users, accounts.book_view, Clock(), InlineIO().run)
    results: list[Any] = []
    portal.login(BearerToken(secret), None, IPrincipal).addCallback(results.append)
    assert results and results[0][1].name == "alice"


def test_a_token_of_another_generation_is_refused(client: Client) -> None:
    """A token bound to an earlier alice fails against the current alice, even
    while it is still in the token book."""
    client.add_user("alice")
    token, secret = issue("alice", client.clock.seconds(), 600, generation="0" * 16)
    client.accounts.book.add(token)
    client.token = secret
    assert client.json("GET", "/api/jobs")[0] == 401


# --- tokens minted with tokens ----------------------------------------------------------


def test_token_minted_with_a_token_never_outlives_its_parent(client: Client) -> None:
    """A token made with a token expires no later than that token, whatever
    expires_in asks for; a token made with a password may live 365 days."""
    client.add_user("alice", password="pw")
    client.token = None
    _, parent, _ = client.json(
        "POST", "/api/tokens", {"expires_in": 600}, headers=basic("alice", "pw")
    )
    client.token = parent["token"]
    code, child, _ = client.json("POST", "/api/tokens", {"expires_in": 365 * 86400})
    assert code == 201 and child["expires"] == parent["expires"]
    assert child["parent"] == parent["id"] and parent["parent"] is None
    client.token = child["token"]
    assert client.json("GET", "/api/jobs")[0] == 200
    client.clock.advance(601)
    assert client.json("GET", "/api/jobs")[0] == 401, "the child expired with its parent"


def test_revoking_a_token_revokes_the_tokens_minted_with_it(client: Client) -> None:
    """DELETE /api/tokens/{id} also revokes every token made with that token
    (and the ones made with those), at once and in tokens.json."""
    client.add_user("alice", password="pw")
    client.token = None
    _, parent, _ = client.json("POST", "/api/tokens", raw=b"", headers=basic("alice", "pw"))
    client.token = parent["token"]
    _, child, _ = client.json("POST", "/api/tokens", {"description": "child"})
    client.token = child["token"]
    _, grandchild, _ = client.json("POST", "/api/tokens", {"description": "grandchild"})
    _, sibling, _ = client.json(
        "POST", "/api/tokens", {"description": "by password"}, headers=basic("alice", "pw")
    )
    client.token = sibling["token"]
    response, _ = client.request("DELETE", f"/api/tokens/{parent['id']}")
    assert response.code == 204
    for revoked in (parent, child, grandchild):
        client.token = revoked["token"]
        assert client.json("GET", "/api/jobs")[0] == 401, revoked["description"]
    client.token = sibling["token"]
    assert client.json("GET", "/api/jobs")[0] == 200, "a password-made token is no child"
    stored = client.accounts.tokens_path
    assert child["id"] not in Path(stored).read_text()


# --- /metrics ---------------------------------------------------------------------------


def test_metrics_are_for_admins_and_the_metrics_role(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain user's GET /metrics is a JSON 403; the admin and a user made
    with `cmdd user add NAME --role metrics` read it."""
    client.token = client.add_user("alice")
    code, body, _ = client.json("GET", "/metrics")
    assert code == 403 and body["error"]["code"] == "FORBIDDEN"
    client.token = client.admin_token
    response, content = client.request("GET", "/metrics")
    assert response.code == 200 and b"cmdd_jobs_submitted_total" in content
    user_command(monkeypatch, tmp_path, "add", "prom", "--role", "metrics")
    client.accounts.reload_users()
    code, created, _ = token_request(client, "prom", "pw")
    assert code == 201
    client.token = created["token"]
    response, content = client.request("GET", "/metrics")
    assert response.code == 200 and b"cmdd_jobs_submitted_total" in content


@pytest.mark.parametrize(("method", "path"), routes())
def test_metrics_role_can_do_nothing_else(client: Client, method: str, path: str) -> None:
    """The metrics role reads /metrics and the API description and manages its
    own tokens; every other route answers 403 FORBIDDEN."""
    client.token = client.add_user("prom", role="metrics")
    response, content = client.request(method, path, raw=b"{}", headers=JSON)
    allowed = {("GET", "/metrics"), ("GET", "/api/openapi.json"), ("GET", "/healthz"),
               ("GET", "/readyz"), ("POST", "/api/tokens"), ("GET", "/api/tokens"),
               ("DELETE", "/api/tokens/abc")}
    if (method, path) in allowed:
        assert response.code != 403, (method, path, content)
        return
    assert response.code == 403, (method, path, content)
    assert json.loads(content)["error"]["code"] == "FORBIDDEN"


# The 500 is provoked on purpose; its failure must be logged.
@pytest.mark.logs_errors("authentication failed unexpectedly")
def test_an_error_raised_past_the_gate_is_a_json_500(client: Client) -> None:
    """What the resource behind the gate raises while rendering (after the
    token was accepted) is a logged JSON 500, never an unhandled error in a
    Deferred and a request left hanging."""
    from twisted.logger import LogLevel, capturedLogs
    from twisted.web.resource import Resource

    class Broken(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            raise RuntimeError("boom")

    client.gate._inner = Broken()
    with capturedLogs() as events:
        response, content = client.request("GET", "/api/jobs")
    assert response.code == 500
    assert json.loads(content)["error"]["code"] == "INTERNAL_ERROR"
    assert any(event.get("log_level") == LogLevel.critical for event in events)
