"""clawsup: a PID-1 process supervisor for the Clawdbot gateway."""

__version__ = "0.1.0"
