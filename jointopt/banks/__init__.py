"""Bringing recorded generations into jointopt: importing tables, converting other tools' logs."""
