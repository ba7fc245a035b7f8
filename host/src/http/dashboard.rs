//! `GET /`: the dashboard, one self-contained page (no external scripts, styles or
//! fonts, so it works without a network). It polls the JSON API.
//!
//! It carries operator buttons, so it is served so that no other site can use them:
//! a Content-Security-Policy that runs only its own script and style (by their
//! digests, computed from the page once) and lets it fetch only this server, in no
//! frame (`frame-ancestors 'none'`, and `X-Frame-Options: DENY` for older browsers:
//! no clickjacking), and `nosniff`.

use std::sync::OnceLock;

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use base64::Engine;
use sha2::Digest;

const PAGE: &str = include_str!("dashboard.html");

/// The page's policy: its one inline script and its one inline style, by digest.
fn policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let digest = |open: &str, close: &str| {
            let start = PAGE.find(open).expect("the page has it") + open.len();
            let end = start + PAGE[start..].find(close).expect("closed");
            let hash = sha2::Sha256::digest(&PAGE.as_bytes()[start..end]);
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(hash))
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            digest("<script>", "</script>"),
            digest("<style>", "</style>")
        )
    })
}

/// The dashboard.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "dashboard",
    tag = "operations",
    responses((status = 200, description = "The dashboard's page (it holds no data)", content_type = "text/html", body = String)),
)]
pub async fn page() -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy())),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    (headers, PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy names the digest of the page's script and style as they are, so an
    /// edit of the page cannot leave it refusing its own script.
    #[test]
    fn the_policy_allows_exactly_the_page_s_own_script_and_style() {
        let policy = policy();
        assert_eq!(PAGE.matches("<script>").count(), 1, "one inline script, the one the policy names");
        assert_eq!(PAGE.matches("<style>").count(), 1);
        assert!(!policy.contains("unsafe-inline") && policy.contains("frame-ancestors 'none'"), "{policy}");
        let script = &PAGE[PAGE.find("<script>").unwrap() + 8..PAGE.find("</script>").unwrap()];
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()));
        assert!(policy.contains(&format!("script-src 'sha256-{hash}'")), "{policy}");
        assert!(!PAGE.contains(" onclick=\"") && !PAGE.contains(" style=\""), "no inline handlers or styles");
    }
}
