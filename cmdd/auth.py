"""Authentication: twisted.cred checkers and realm, throttling, and the gate.

Every request but C{GET /healthz}, C{/readyz} and the console's static
files (C{/ui/}, L{cmdd.console}) passes L{AuthGate} before it reaches a
route, so a route added later cannot forget to check: the gate, not each
handler, decides. Bearer tokens work everywhere; HTTP Basic (user and
password) only where a token is made, C{POST /api/tokens}. Password checks
are throttled per (user, address) (L{cmdd.throttle}); tokens are not.
The C{metrics} role passes the gate only for C{/metrics} and its own tokens.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import Attribute, implementer

from cmdd.console import is_console_path
from cmdd.errors import ClientError
from cmdd.principal import IPrincipal
from cmdd.throttle import FailureThrottle as FailureThrottle
from cmdd.throttle import retry_after, throttle_key
from cmdd.tls import peer_common_name
from cmdd.tokens import Token, TokenBook
from cmdd.users import User, verify_password
from cmdd.web import respond_json

log = Logger()

REALM = "cmdd"
BASIC_PATHS = frozenset({(b"POST", b"/api/tokens")})
PUBLIC_PATHS = frozenset({b"/healthz", b"/readyz"})
#: Roles that may read C{GET /metrics}.
METRICS_READERS = frozenset({"admin", "metrics"})
#: What the C{metrics} role may do: read metrics and the API description,
#: make, list and revoke its own tokens. Everything else is 403.
_METRICS_ROLE_ROUTES = frozenset(
    {
        (b"GET", b"/metrics"),
        (b"GET", b"/api/openapi.json"),
        (b"POST", b"/api/tokens"),
        (b"GET", b"/api/tokens"),
    }
)
#: A valid hash to check against for unknown users, so a miss takes as long.
_DUMMY_HASH = (
    "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)


class IBearerToken(ICredentials):
    """A bearer token presented in an C{Authorization} header."""

    token = Attribute("the token string")


@implementer(IBearerToken)
@attrs.frozen(repr=False)
class BearerToken:
    """Bearer credentials (the repr never shows the token)."""

    token: str


@implementer(IPrincipal)
@attrs.frozen
class Principal:
    """Who is asking: a name, a role, and the token it showed (if any)."""

    name: str
    role: str
    #: The bearer token this request came with (C{None}: a password or a
    #: client certificate). Tokens minted with it are bound to it.
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        """Admins see and manage every job."""
        return self.role == "admin"

    def may_see(self, owner: str) -> bool:
        """Whether this principal may see a job owned by C{owner}."""
        return self.is_admin or owner == self.name

    def may_request(self, method: bytes, path: bytes) -> bool:
        """Whether this principal's role may use C{method path} at all."""
        if self.role != "metrics":
            return True
        if method == b"HEAD":
            method = b"GET"
        if method == b"DELETE" and path.startswith(b"/api/tokens/"):
            return b"/" not in path[len(b"/api/tokens/") :]
        return (method, path) in _METRICS_ROLE_ROUTES


Users = Callable[[], dict[str, User]]
Blocking = Callable[..., Deferred[Any]]


@implementer(ICredentialsChecker)
class TokenChecker:
    """Checks bearer tokens against the token book and their owners.

    The avatar id is the L{Token} record: the realm needs its id too.
    """

    credentialInterfaces = (IBearerToken,)

    def __init__(self, book: Callable[[], TokenBook], clock: IReactorTime, users: Users) -> None:
        self._book = book
        self._clock = clock
        self._users = users

    def requestAvatarId(self, credentials: IBearerToken) -> Deferred[Any]:
        token = self._book().check(credentials.token, self._clock.seconds())
        if token is None:
            return fail(UnauthorizedLogin("invalid, expired or revoked token"))
        owner = self._users().get(token.owner)
        if owner is None or owner.generation != token.generation:
            # The owner was removed (and perhaps added again): not its token.
            return fail(UnauthorizedLogin("invalid, expired or revoked token"))
        return succeed(token)


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Checks user names and passwords (scrypt, on a thread)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: Users, run_blocking: Blocking) -> None:
        self._users = users
        self._run_blocking = run_blocking

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        name = credentials.username.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "replace")
        user = self._users().get(name)
        encoded = user.password_hash if user is not None else _DUMMY_HASH

        def checked(ok: bool) -> str:
            if not ok or user is None:
                raise UnauthorizedLogin("wrong user name or password")
            return name

        d: Deferred[bool] = self._run_blocking(verify_password, password, encoded)
        return d.addCallback(checked)


@implementer(IRealm)
class CmddRealm:
    """Turns an authenticated name into a L{Principal} (if the user still exists)."""

    def __init__(self, users: Users) -> None:
        self._users = users

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: Any
    ) -> tuple[Any, Principal, Callable[[], None]]:
        if IPrincipal not in interfaces:
            raise NotImplementedError("cmdd only has principals")
        token = avatarId if isinstance(avatarId, Token) else None
        user = self._users().get(token.owner if token is not None else avatarId)
        if user is None:
            raise UnauthorizedLogin("the user no longer exists")
        principal = Principal(user.name, user.role, None if token is None else token.id)
        return IPrincipal, principal, lambda: None


def make_portal(
    users: Users, book: Callable[[], TokenBook], clock: IReactorTime, run_blocking: Blocking
) -> Portal:
    """The portal with both checkers."""
    return Portal(
        CmddRealm(users),
        [TokenChecker(book, clock, users), PasswordChecker(users, run_blocking)],
    )


@attrs.frozen
class RunAsPolicy:
    """Which cmdd user may run jobs as which Unix users (an allow-list).

    Only a daemon running as root can switch users; everyone else gets a
    clear 403 instead of a job that fails later.
    """

    allowed: frozenset[tuple[str, str]] = frozenset()
    daemon_is_root: bool = False

    def check(self, principal: Principal, unix_user: str) -> None:
        """Allow, or raise a 403 that says why not."""
        if not self.daemon_is_root:
            raise ClientError(
                "RUN_AS_UNAVAILABLE",
                "this daemon does not run as root, so it cannot run jobs as another user",
                status=403,
                field="user",
            )
        if (principal.name, unix_user) not in self.allowed:
            raise ClientError(
                "RUN_AS_FORBIDDEN",
                f"{principal.name} may not run jobs as Unix user {unix_user!r}",
                status=403,
                field="user",
            )


def principal_of(request: IRequest) -> Principal:
    """The principal L{AuthGate} attached to this request."""
    getter: Any = getattr(request, "getComponent", None)
    principal = None if getter is None else getter(IPrincipal)
    if not isinstance(principal, Principal):
        raise ClientError("UNAUTHENTICATED", "authentication required", status=401)
    return principal


def _unauthorized(message: str, scheme: str = "Bearer") -> ClientError:
    return ClientError(
        "UNAUTHENTICATED",
        message,
        status=401,
        headers={"WWW-Authenticate": f'{scheme} realm="{REALM}"'},
    )


def parse_authorization(header: str | None, basic_allowed: bool) -> ICredentials:
    """Credentials from an C{Authorization} header.

    @raise ClientError: 401, saying what is missing or malformed.
    """
    if not header:
        raise _unauthorized("send Authorization: Bearer <token> (see POST /api/tokens)")
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer" and value:
        return BearerToken(value)
    if scheme == "basic" and basic_allowed:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _unauthorized("malformed Basic credentials", "Basic") from None
        name, sep, password = decoded.partition(b":")
        if not sep:
            raise _unauthorized("malformed Basic credentials", "Basic")
        return UsernamePassword(name, password)
    if scheme == "basic":
        raise _unauthorized("passwords are only accepted at POST /api/tokens; use a bearer token")
    raise _unauthorized("unsupported authorization scheme; use Bearer")


class AuthGate(Resource):
    """Authenticates every request (but public paths) before the API sees it."""

    isLeaf = True

    def __init__(
        self,
        inner: IResource,
        portal: Portal,
        throttle: FailureThrottle,
        users: Users = dict,
        client_certificates: bool = False,
        console: IResource | None = None,
    ) -> None:
        super().__init__()
        self._inner = inner
        #: Serves C{/ui/} without a token; such a request never reaches C{inner}.
        self._console = console
        self._portal = portal
        self._throttle = throttle
        self._users = users
        self._client_certificates = client_certificates
        #: Requests refused for bad or missing credentials (401) or while
        #: throttled (429), since start; exposed as cmdd_auth_failures_total.
        self.failures = 0

    def render(self, request: IRequest) -> Any:
        if request.path in PUBLIC_PATHS:
            return self._inner.render(request)
        if self._console is not None and is_console_path(request.path):
            return self._console.render(request)
        d = Deferred.fromCoroutine(self._authenticate(request))
        d.addCallback(self._admit, request)
        # Also what _admit (the route's own rendering) raises: never an
        # "Unhandled error in Deferred" and a request left hanging.
        d.addErrback(self._refuse, request)
        return NOT_DONE_YET

    async def _authenticate(self, request: IRequest) -> Principal:
        header = request.getHeader("authorization")
        if not header and self._client_certificates:
            # Mutual TLS: the handshake verified the certificate against the
            # client CA; its common name names the cmdd user.
            name = peer_common_name(getattr(request, "transport", None))
            user = self._users().get(name) if name else None
            if user is not None:
                return Principal(user.name, user.role)
        basic_allowed = (request.method, request.path) in BASIC_PATHS
        credentials = parse_authorization(header, basic_allowed)
        if IUsernamePassword.providedBy(credentials):
            return await self._password_login(credentials, _address(request))
        try:
            _, principal, _ = await self._portal.login(credentials, None, IPrincipal)
        except UnauthorizedLogin:
            # Not throttled: a token cannot be guessed, and counting bad ones
            # per address would let one stale client lock out its neighbours.
            raise _unauthorized("invalid, expired or revoked token") from None
        assert isinstance(principal, Principal)
        return principal

    async def _password_login(self, credentials: Any, address: str) -> Principal:
        """Check a password, throttled per (user, address); the attempt is
        counted from before the (threaded) check until its verdict."""
        key = throttle_key(credentials.username.decode("utf-8", "replace"), address)
        wait = self._throttle.begin(key)
        if wait is not None:
            raise ClientError(
                "TOO_MANY_FAILURES",
                "too many failed logins for this user from your address; try again later",
                status=429,
                headers={"Retry-After": retry_after(wait)},
            )
        try:
            _, principal, _ = await self._portal.login(credentials, None, IPrincipal)
        except UnauthorizedLogin:
            self._throttle.failed(key)
            raise _unauthorized("wrong user name or password", "Basic") from None
        except BaseException:
            self._throttle.abandoned(key)
            raise
        self._throttle.succeeded(key)
        assert isinstance(principal, Principal)
        return principal

    def _admit(self, principal: Principal, request: IRequest) -> None:
        if not principal.may_request(request.method, request.path):
            error = ClientError(
                "FORBIDDEN",
                f"the {principal.role} role may only read /metrics and manage its own tokens",
                status=403,
            )
            self._respond_error(error, request)
            return
        # twisted.web's Request is Componentized (IRequest does not say so).
        componentized: Any = request
        componentized.setComponent(IPrincipal, principal)
        body = self._inner.render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _refuse(self, failure: Any, request: IRequest) -> None:
        error = failure.value
        if isinstance(error, ClientError) and error.status in (401, 429):
            self.failures += 1
        if not isinstance(error, ClientError):
            log.failure("authentication failed unexpectedly", failure)
            error = ClientError("INTERNAL_ERROR", "the server failed; see its log", status=500)
        self._respond_error(error, request)

    def _respond_error(self, error: ClientError, request: IRequest) -> None:
        if getattr(request, "finished", False) or getattr(request, "_disconnected", False):
            return
        if getattr(request, "startedWriting", False):
            # Too late for a status line: end the response so the client notices.
            channel: Any = request
            channel.loseConnection()
            return
        request.write(respond_json(request, error.to_json(), error.status, error.headers))
        request.finish()


def _address(request: IRequest) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "unix"))
