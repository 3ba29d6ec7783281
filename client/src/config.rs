//! Where the cluster is and how to authenticate to it, gathered from flags, a profile file or the
//! environment, so that every tool (CLI, tests, bench) resolves settings the same way.

use crate::ClientError;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable / env-file key holding the comma-separated endpoint list.
pub const ENV_ENDPOINTS: &str = "INGOT_ENDPOINTS";
/// Environment variable / env-file key holding the path of the cluster CA certificate (PEM).
pub const ENV_CA: &str = "INGOT_CA";
/// Environment variable / env-file key holding the bearer token.
pub const ENV_TOKEN: &str = "INGOT_TOKEN";

/// Everything needed to connect: the regions' API endpoints, the cluster CA that signed their certificates
/// and the bearer token sent with every call.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `https://host:port` URLs of region API listeners; calls are balanced over all of them.
    pub endpoints: Vec<String>,
    /// The cluster CA certificate (PEM text, not a path).
    pub ca_pem: String,
    /// The bearer token (admin token or another token issued by the cluster).
    pub token: String,
}

impl fmt::Debug for ClientConfig {
    // The token is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Settings found in one source; each may be missing, and [`ClientConfig::resolve`] merges them field by
/// field.
#[derive(Default, Debug)]
struct Partial {
    endpoints: Option<Vec<String>>,
    ca: Option<PathBuf>,
    token: Option<String>,
}

impl ClientConfig {
    /// Reads a shell-sourceable env file as written by `ingot dev up` (`DIR/env`):
    /// `[export ]INGOT_ENDPOINTS=...`, `INGOT_CA=/path/ca.crt` (a path; the file is read) and
    /// `INGOT_TOKEN=...`, values optionally quoted with `'...'` or `"..."`. All three keys are required.
    pub fn from_env_file(path: impl AsRef<Path>) -> Result<ClientConfig, ClientError> {
        let path = path.as_ref();
        let p = read_env_file(path)?;
        let endpoints = p.endpoints.ok_or(ClientError::Missing {
            what: "endpoint",
            var: ENV_ENDPOINTS,
        })?;
        let ca = p.ca.ok_or(ClientError::Missing {
            what: "CA certificate",
            var: ENV_CA,
        })?;
        let token = p.token.ok_or(ClientError::Missing {
            what: "token",
            var: ENV_TOKEN,
        })?;
        Ok(ClientConfig {
            endpoints,
            ca_pem: read_file(&ca)?,
            token,
        })
    }

    /// Builds the configuration the way every Ingot tool does, field by field: explicit values (flags) win,
    /// then the profile file (an env file, see [`ClientConfig::from_env_file`]), then the `INGOT_ENDPOINTS`,
    /// `INGOT_CA` and `INGOT_TOKEN` environment variables. A field given nowhere is an error that tells the
    /// user what to pass. Endpoints may be comma-separated inside each element; `host:port` gets `https://`.
    pub fn resolve(
        endpoints: Option<Vec<String>>,
        ca: Option<PathBuf>,
        token: Option<String>,
        profile: Option<PathBuf>,
    ) -> Result<ClientConfig, ClientError> {
        let profile = match profile {
            Some(p) => read_env_file(&p)?,
            None => Partial::default(),
        };
        let env = Partial {
            endpoints: std::env::var(ENV_ENDPOINTS)
                .ok()
                .map(|v| split_endpoints([v.as_str()]))
                .filter(|v| !v.is_empty()),
            ca: std::env::var_os(ENV_CA)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            token: std::env::var(ENV_TOKEN).ok().filter(|v| !v.is_empty()),
        };
        let endpoints = endpoints
            .map(|v| split_endpoints(v.iter().map(String::as_str)))
            .filter(|v| !v.is_empty())
            .or(profile.endpoints)
            .or(env.endpoints)
            .ok_or(ClientError::Missing {
                what: "endpoint",
                var: ENV_ENDPOINTS,
            })?;
        let ca = ca.or(profile.ca).or(env.ca).ok_or(ClientError::Missing {
            what: "CA certificate",
            var: ENV_CA,
        })?;
        let token = token
            .filter(|t| !t.is_empty())
            .or(profile.token)
            .or(env.token)
            .ok_or(ClientError::Missing {
                what: "token",
                var: ENV_TOKEN,
            })?;
        Ok(ClientConfig {
            endpoints,
            ca_pem: read_file(&ca)?,
            token: token.trim().to_string(),
        })
    }
}

/// Splits comma-separated endpoint lists, trims them, drops empty items and adds `https://` to bare
/// `host:port` items.
pub fn split_endpoints<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    items
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_string()
            } else {
                format!("https://{s}")
            }
        })
        .collect()
}

fn read_file(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_env_file(path: &Path) -> Result<Partial, ClientError> {
    let text = read_file(path)?;
    let vars = parse_env(&text).map_err(|(line, message)| ClientError::EnvFile {
        path: path.to_path_buf(),
        line,
        message,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    Ok(Partial {
        endpoints: vars
            .get(ENV_ENDPOINTS)
            .map(|v| split_endpoints([v.as_str()]))
            .filter(|v| !v.is_empty()),
        // A relative CA path is relative to the env file, not to the caller's working directory.
        ca: vars
            .get(ENV_CA)
            .filter(|v| !v.is_empty())
            .map(|v| base.join(v)),
        token: vars.get(ENV_TOKEN).filter(|v| !v.is_empty()).cloned(),
    })
}

/// Parses `[export ]KEY=VALUE` lines (blank lines and `#` comments allowed). Returns the 1-based line
/// number and a message on error.
fn parse_env(text: &str) -> Result<HashMap<String, String>, (usize, String)> {
    let mut out = HashMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((n + 1, format!("expected KEY=VALUE, found '{line}'")));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((n + 1, format!("invalid variable name '{key}'")));
        }
        let value = unquote(value.trim()).map_err(|m| (n + 1, m))?;
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// Removes shell quoting: `'...'` (literal, with `'\''` for an embedded quote), `"..."` (with `\"`, `\\`,
/// `\$` and `` \` `` escapes) or an unquoted word.
fn unquote(v: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(c) => out.push(c),
                    None => return Err("unterminated single quote".into()),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\' | '$' | '`')) => out.push(c),
                        Some(c) => {
                            out.push('\\');
                            out.push(c);
                        }
                        None => return Err("unterminated double quote".into()),
                    },
                    Some(c) => out.push(c),
                    None => return Err("unterminated double quote".into()),
                }
            },
            '\\' => match chars.next() {
                Some(c) => out.push(c),
                None => return Err("trailing backslash".into()),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Quotes a value for a POSIX shell (single quotes), the inverse of the env-file parser.
pub fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_and_exported_values() {
        let text = "# comment\nexport INGOT_ENDPOINTS='https://127.0.0.1:1,https://127.0.0.1:2'\n\
                    INGOT_CA=\"/tmp/ca dir/ca.crt\"\nINGOT_TOKEN=abc\n\n";
        let v = parse_env(text).unwrap();
        assert_eq!(
            v["INGOT_ENDPOINTS"],
            "https://127.0.0.1:1,https://127.0.0.1:2"
        );
        assert_eq!(v["INGOT_CA"], "/tmp/ca dir/ca.crt");
        assert_eq!(v["INGOT_TOKEN"], "abc");
    }

    #[test]
    fn shell_quote_roundtrips() {
        for s in ["plain", "it's", "a b 'c' \"d\" $e"] {
            assert_eq!(unquote(&shell_quote(s)).unwrap(), s);
        }
    }

    #[test]
    fn rejects_garbage_lines() {
        assert_eq!(parse_env("a\nnot a line").unwrap_err().0, 1);
        assert!(parse_env("X='open").is_err());
    }

    #[test]
    fn splits_endpoints() {
        assert_eq!(
            split_endpoints(["127.0.0.1:1, https://h:2", "", "https://h:3"]),
            vec!["https://127.0.0.1:1", "https://h:2", "https://h:3"]
        );
    }

    #[test]
    fn from_env_file_reads_ca() {
        let dir = std::env::temp_dir().join(format!("ingot-client-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), "PEM").unwrap();
        std::fs::write(
            dir.join("env"),
            "export INGOT_ENDPOINTS='127.0.0.1:5'\nexport INGOT_CA='ca.crt'\nexport INGOT_TOKEN='t'\n",
        )
        .unwrap();
        let c = ClientConfig::from_env_file(dir.join("env")).unwrap();
        assert_eq!(c.endpoints, vec!["https://127.0.0.1:5"]);
        assert_eq!(c.ca_pem, "PEM");
        assert_eq!(c.token, "t");
        // Flags win over the profile.
        let c = ClientConfig::resolve(
            Some(vec!["https://x:1".into()]),
            None,
            Some("flag".into()),
            Some(dir.join("env")),
        )
        .unwrap();
        assert_eq!(c.endpoints, vec!["https://x:1"]);
        assert_eq!(c.token, "flag");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
