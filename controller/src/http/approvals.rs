//! `GET`/`POST /approvals/{token}`: the approval pages.
