"""Tests of autotransfer.report."""
