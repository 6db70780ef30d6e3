//! Connection strings made safe to log.

/// The connection string with any password replaced by `***`, safe to log.
///
/// ```
/// use pgkafka::redact;
///
/// assert_eq!(redact("postgresql://app:s3cret@db:5432/prod"), "postgresql://app:***@db:5432/prod");
/// assert_eq!(redact("host=db user=app password='s3 cret' dbname=prod"), "host=db user=app password=*** dbname=prod");
/// assert_eq!(redact("postgresql://db/prod?password=s3cret&sslmode=require"), "postgresql://db/prod?password=***&sslmode=require");
/// ```
#[must_use]
pub fn redact(connection_string: &str) -> String {
    if is_url(connection_string) {
        let (base, query) = match connection_string.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (connection_string, None),
        };
        let mut out = match (base.find("://"), base.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = base.get(scheme + 3..at).unwrap_or_default();
                match userinfo.split_once(':') {
                    Some((user, _)) => format!("{}{user}:***{}", base.get(..scheme + 3).unwrap_or_default(), base.get(at..).unwrap_or_default()),
                    None => base.to_owned(),
                }
            }
            _ => base.to_owned(),
        };
        if let Some(query) = query {
            let parts: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            out.push('?');
            out.push_str(&parts.join("&"));
        }
        out
    } else {
        key_values(connection_string)
            .into_iter()
            .map(|(key, value)| if key == "password" { "password=***".to_owned() } else { value })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub(crate) fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// Splits a `key=value` connection string into (key, original token) pairs, honouring quotes.
pub(crate) fn key_values(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut token = key.clone();
        if chars.peek() == Some(&'=') {
            chars.next();
            token.push('=');
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'\'') {
                token.push('\'');
                chars.next();
                while let Some(c) = chars.next() {
                    token.push(c);
                    if c == '\\' {
                        if let Some(escaped) = chars.next() {
                            token.push(escaped);
                        }
                    } else if c == '\'' {
                        break;
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    token.push(c);
                    chars.next();
                }
            }
        }
        out.push((key, token));
    }
    out
}

