"""The twistd plugin for cmdd: C{twistd cmdd}.

String-based, so twistd's plugin scan imports nothing heavy (no reactor).
"""

from twisted.application.service import ServiceMaker

cmdd = ServiceMaker(
    "cmdd",
    "cmdd.tap",
    "Run commands on this host for HTTPS REST clients.",
    "cmdd",
)
