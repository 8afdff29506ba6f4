"""Test and benchmark support code: doubles, oracles, builders. Never imported by a runtime package."""
