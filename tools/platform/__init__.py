"""Mock platforms: a local stand-in for a provincial or national platform
(:mod:`tools.platform.mock`) and the checks it applies to what it receives
(:mod:`tools.platform.checks`)."""
