//! A stateful fake of the GitHub REST API, served over HTTP on loopback (tests and demo).
