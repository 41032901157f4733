"""The bundled demo gateway: a stand-in for the Clawdbot gateway that fails on command.

See :mod:`clawsup.demo.gateway`; run it with ``python -m clawsup.demo.gateway``.
"""
