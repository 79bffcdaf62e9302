"""Reading untrusted input safely (size, alias, depth caps) and keeping secrets out of logs."""
