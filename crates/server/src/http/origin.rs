//! Which sites a browser may reach the listener from.
//!
//! The listener has no TLS and, in the quick start, no tokens, so a browser is what stands
//! between it and every page its user visits. Three checks keep other sites out:
//!
//! 1. **Host.** A request must name this listener in `Host`: its own address, a loopback name
//!    (`localhost`, `127.0.0.1`, `[::1]`) when it listens on loopback, or the host of an
//!    allowed origin. A page on `evil.example` whose name is made to resolve to 127.0.0.1 (DNS
//!    rebinding) sends `Host: evil.example` and is refused, so it cannot read history.
//!    A listener on a wildcard address (`0.0.0.0`) cannot know its names: there `Host` is
//!    checked only against the allowed origins, when any are configured.
//! 2. **Origin.** A write (`POST`) or a WebSocket whose `Origin` is set must come from this
//!    listener (`http://` and a host of rule 1) or from an allowed origin, compared as scheme,
//!    host and port. A request without `Origin` (curl, a program) is not a browser's page.
//! 3. **Content type.** A `POST` body must be JSON or a type an HTML form cannot send
//!    (`text/plain`, `application/x-www-form-urlencoded` and `multipart/form-data` are
//!    refused; a body without a type is raw), so a cross-site form, which carries no `Origin`
//!    in older browsers, cannot store a record either.
//!
//! The page itself is sent with `X-Frame-Options: DENY` and a content security policy that
//! lets it load and connect to nothing but this listener.

use axum::http::{HeaderMap, Method, header};

use super::error::BadRequest;

/// The hosts and origins this listener answers browsers from.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    /// The `Host` values accepted; `None`: any (a wildcard address without allowed origins).
    hosts: Option<Vec<String>>,
    /// The `Origin` values accepted, as `scheme://host[:port]`.
    origins: Vec<String>,
}

/// Whether `origin` is written as `http://` or `https://`, a host, and an optional port, with
/// nothing after: the form `Origin` headers take.
pub fn check_allowed_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(|| format!("{origin:?}: an origin starts with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{origin:?}: an origin is a scheme, a host and an optional port, like https://events.example.com"
        ));
    }
    Ok(())
}

impl OriginPolicy {
    /// The policy of a listener bound to `local`, with `allowed` origins (each checked with
    /// [`check_allowed_origin`]) beside its own.
    pub(crate) fn new(local: std::net::SocketAddr, allowed: &[String]) -> OriginPolicy {
        let port = local.port();
        let mut own = Vec::new();
        if !local.ip().is_unspecified() {
            own.push(local.to_string());
            if local.ip().is_loopback() {
                own.extend([
                    format!("localhost:{port}"),
                    format!("127.0.0.1:{port}"),
                    format!("[::1]:{port}"),
                ]);
            }
            if port == 80 {
                let without_port: Vec<String> =
                    own.iter().filter_map(|h| h.strip_suffix(":80").map(str::to_owned)).collect();
                own.extend(without_port);
            }
        }
        let allowed: Vec<String> = allowed.iter().map(|o| o.to_ascii_lowercase()).collect();
        let allowed_hosts = allowed.iter().filter_map(|o| o.split_once("://").map(|(_, h)| h));
        let mut origins: Vec<String> = own.iter().map(|h| format!("http://{h}")).collect();
        origins.extend(allowed.iter().cloned());
        let hosts = match (local.ip().is_unspecified(), allowed.is_empty()) {
            (true, true) => None,
            _ => Some(
                own.iter().map(String::as_str).chain(allowed_hosts).map(str::to_owned).collect(),
            ),
        };
        OriginPolicy { hosts, origins }
    }

    /// Rule 1: the request names this listener.
    pub(crate) fn check_host(&self, headers: &HeaderMap) -> Result<(), BadRequest> {
        let Some(hosts) = &self.hosts else {
            return Ok(());
        };
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        match hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            true => Ok(()),
            false => Err(BadRequest::ForeignHost { host: host.to_owned() }),
        }
    }

    /// Rule 2: a browser's page that sent this came from this listener or an allowed origin.
    pub(crate) fn check_origin(&self, headers: &HeaderMap) -> Result<(), BadRequest> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or_default();
        match self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            true => Ok(()),
            false => Err(BadRequest::CrossOrigin { origin: origin.to_owned() }),
        }
    }

    /// Rules 1 to 3 for one request, before any handler runs.
    pub(crate) fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(), BadRequest> {
        self.check_host(headers)?;
        let writes = *method != Method::GET && *method != Method::HEAD;
        if writes || path == "/v1/ws" {
            self.check_origin(headers)?;
        }
        if *method == Method::POST {
            check_content_type(headers)?;
        }
        Ok(())
    }
}

/// Rule 3: a `POST` body is not what an HTML form sends.
fn check_content_type(headers: &HeaderMap) -> Result<(), BadRequest> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let essence = content_type
        .map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .unwrap_or_default();
    match essence.as_str() {
        "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data" => {
            Err(BadRequest::FormContentType {
                content_type: content_type.unwrap_or_default().to_owned(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn loopback_names_and_allowed_origins_only() {
        let policy = OriginPolicy::new(
            "127.0.0.1:8080".parse().unwrap(),
            &["https://events.example".into()],
        );
        for host in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "events.example"] {
            assert!(policy.check_host(&headers(&[("host", host)])).is_ok(), "{host}");
        }
        for host in ["evil.example", "localhost:9090", "127.0.0.1", ""] {
            assert!(policy.check_host(&headers(&[("host", host)])).is_err(), "{host}");
        }
        for origin in ["http://localhost:8080", "https://events.example", "HTTP://127.0.0.1:8080"] {
            assert!(policy.check_origin(&headers(&[("origin", origin)])).is_ok(), "{origin}");
        }
        for origin in
            ["https://localhost:8080", "http://evil.example", "null", "http://events.example"]
        {
            assert!(policy.check_origin(&headers(&[("origin", origin)])).is_err(), "{origin}");
        }
        assert!(policy.check_origin(&HeaderMap::new()).is_ok(), "no Origin: not a browser's page");
    }

    #[test]
    fn a_wildcard_listener_checks_hosts_only_against_allowed_origins() {
        let open = OriginPolicy::new("0.0.0.0:8080".parse().unwrap(), &[]);
        assert!(open.check_host(&headers(&[("host", "anything:8080")])).is_ok());
        let named =
            OriginPolicy::new("0.0.0.0:8080".parse().unwrap(), &["https://events.example".into()]);
        assert!(named.check_host(&headers(&[("host", "events.example")])).is_ok());
        assert!(named.check_host(&headers(&[("host", "anything:8080")])).is_err());
    }

    #[test]
    fn form_content_types_are_refused() {
        for refused in
            ["text/plain", "text/plain; charset=utf-8", "multipart/form-data; boundary=x"]
        {
            assert!(check_content_type(&headers(&[("content-type", refused)])).is_err());
        }
        // A form always names its type; a body without one (curl, a program) is raw.
        assert!(check_content_type(&HeaderMap::new()).is_ok());
        for accepted in ["application/json", "application/octet-stream", "image/png"] {
            assert!(check_content_type(&headers(&[("content-type", accepted)])).is_ok());
        }
    }

    #[test]
    fn allowed_origins_are_written_as_origins() {
        assert!(check_allowed_origin("https://events.example:8443").is_ok());
        for bad in ["events.example", "https://events.example/", "ftp://x", "https://"] {
            assert!(check_allowed_origin(bad).is_err(), "{bad}");
        }
    }
}
