"""Who a request is from: the avatar interface of cmdd's C{twisted.cred}
portal, and the component under which a request carries it.

L{cmdd.auth.AuthGate} sets the authenticated principal on the request as a
component (C{request.setComponent(IPrincipal, principal)}); routes and the
access log read it with C{request.getComponent(IPrincipal)}. Its own module
so that the web layer can read it without importing the auth machinery.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IPrincipal(Interface):
    """Who a request is from: a cmdd user with a role."""

    name = Attribute("the user name (str)")
    role = Attribute("the role: admin, user or metrics (str)")
