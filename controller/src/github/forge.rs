//! Reporting back to GitHub (Deployments, commit statuses) and the GitHub-backed tests.
