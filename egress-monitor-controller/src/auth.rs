//! Who may call: operators with an admin token, nodes with a fleet token or their own.
//!
//! Token files hold one token per line (blank lines and `#` comments ignored), and must be
//! readable by their owner only (`chmod 600`): a file others can read is refused. The admin
//! token file's lines are `NAME ROLE TOKEN` (ROLE `operator`, who may change the fleet, or
//! `read-only`, who may only read it), or a bare `TOKEN` (an operator named `operator-LINE`);
//! the name goes into the fleet's history with every change. The node token file's lines are
//! either `TOKEN` (a fleet token: any node id not bound to anything stronger) or
//! `NODE_ID TOKEN` (a token only that node may use). A node may also hold a credential the
//! controller gave it for an Azure attested document (`crate::attest`), kept in the database as
//! its SHA-256. File tokens are compared as SHA-256 digests, in constant time, against every
//! configured token, so neither timing nor length says how close a guess came.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use egress_monitor_api::wire::valid_node_id;

/// Tokens shorter than this are refused at start: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}: no token in the file")]
    Empty(PathBuf),
    #[error(
        "{path} can be read by other users (mode {mode:03o}): a token file must be its owner's alone (chmod 600 {path})"
    )]
    Loose { path: String, mode: u32 },
}

/// What an operator's token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read everything, change nothing.
    ReadOnly,
    /// Read, and change the fleet's policy and mode, and forget nodes.
    Operator,
}

impl Role {
    fn parse(word: &str) -> Option<Role> {
        match word {
            "read-only" => Some(Role::ReadOnly),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// An operator's token: its name (for the history and the log) and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
}

type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// A token's SHA-256 in hex: how node credentials are stored (a stolen database holds no
/// usable credential).
pub fn digest_hex(token: &str) -> String {
    hex(&digest(token))
}

/// Bytes as lowercase hex digits.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a node token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeScope {
    /// A fleet token: the node says who it is.
    AnyNode,
    /// A token bound to one node id.
    Node(String),
    /// A credential the controller gave for an Azure attested document: this node id, on this
    /// VM.
    Attested { node_id: String, vm_id: String },
}

impl NodeScope {
    /// The node id the credential is bound to (none for a fleet token).
    pub fn owner(&self) -> Option<&str> {
        match self {
            NodeScope::AnyNode => None,
            NodeScope::Node(node_id) | NodeScope::Attested { node_id, .. } => Some(node_id),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tokens {
    admin: Vec<(Operator, Digest32)>,
    nodes: Vec<(NodeScope, Digest32)>,
}

/// What a request proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Operator(Operator),
    Node(NodeScope),
}

impl Tokens {
    /// How many admin and node tokens there are.
    pub fn counts(&self) -> (usize, usize) {
        (self.admin.len(), self.nodes.len())
    }

    pub fn load(admin_file: &Path, node_file: &Path) -> Result<Tokens, TokenError> {
        let invalid = |line, message: String| TokenError::Invalid {
            path: admin_file.to_owned(),
            line,
            message,
        };
        let admin = lines(admin_file)?
            .into_iter()
            .map(|(line, fields)| match fields.as_slice() {
                [token] => Ok((
                    Operator {
                        name: format!("operator-{line}"),
                        role: Role::Operator,
                    },
                    digest(token),
                )),
                [name, role, token] => {
                    if !valid_node_id(name) {
                        return Err(invalid(
                            line,
                            format!(
                                "`{name}` is not a name (1-128 letters, digits, '.', '_', '-')"
                            ),
                        ));
                    }
                    let role = Role::parse(role).ok_or_else(|| {
                        invalid(
                            line,
                            format!("`{role}` is not a role: operator or read-only"),
                        )
                    })?;
                    Ok((
                        Operator {
                            name: name.clone(),
                            role,
                        },
                        digest(token),
                    ))
                }
                _ => Err(invalid(
                    line,
                    "expected `NAME ROLE TOKEN` (ROLE: operator or read-only) or `TOKEN`".into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, (operator, _)) in admin.iter().enumerate() {
            if admin[..i]
                .iter()
                .any(|(other, _)| other.name == operator.name)
            {
                return Err(invalid(
                    0,
                    format!("the name `{}` is given twice", operator.name),
                ));
            }
        }
        let nodes = lines(node_file)?
            .into_iter()
            .map(|(line, fields)| match fields.as_slice() {
                [token] => Ok((NodeScope::AnyNode, digest(token))),
                [node, token] if valid_node_id(node) => {
                    Ok((NodeScope::Node(node.clone()), digest(token)))
                }
                [node, _] => Err(TokenError::Invalid {
                    path: node_file.to_owned(),
                    line,
                    message: format!(
                        "`{node}` is not a node id (1-128 letters, digits, '.', '_', '-')"
                    ),
                }),
                _ => Err(TokenError::Invalid {
                    path: node_file.to_owned(),
                    line,
                    message: "expected `TOKEN` (fleet) or `NODE_ID TOKEN` (one node)".into(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if admin
            .iter()
            .any(|(_, a)| nodes.iter().any(|(_, n)| bool::from(a.ct_eq(n))))
        {
            return Err(TokenError::Invalid {
                path: node_file.to_owned(),
                line: 0,
                message: "a node token is also the admin token: nodes must not be operators".into(),
            });
        }
        Ok(Tokens { admin, nodes })
    }

    /// Whether `node_id` has a `NODE_ID TOKEN` line: then only that token reports for it.
    pub fn has_own_token(&self, node_id: &str) -> bool {
        self.nodes
            .iter()
            .any(|(scope, _)| matches!(scope, NodeScope::Node(id) if id == node_id))
    }

    /// Who presented `token`, if anyone. Every configured token is compared, whatever matches.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let presented = digest(token);
        let mut found = None;
        for (operator, admin) in &self.admin {
            if bool::from(admin.ct_eq(&presented)) {
                found = Some(Caller::Operator(operator.clone()));
            }
        }
        for (scope, node) in &self.nodes {
            if bool::from(node.ct_eq(&presented)) && found.is_none() {
                found = Some(Caller::Node(scope.clone()));
            }
        }
        found
    }
}

/// Each token line's whitespace-separated fields, with its line number.
fn lines(path: &Path) -> Result<Vec<(usize, Vec<String>)>, TokenError> {
    use std::os::unix::fs::PermissionsExt as _;
    let read = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TokenError::Loose {
            path: path.display().to_string(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let token = fields.last().expect("a non-empty line has a field");
        if token.len() < MIN_TOKEN_LEN || !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(TokenError::Invalid {
                path: path.to_owned(),
                line: i + 1,
                message: format!(
                    "a token is at least {MIN_TOKEN_LEN} printable characters (e.g. `openssl rand -hex 32`)"
                ),
            });
        }
        out.push((i + 1, fields));
    }
    if out.is_empty() {
        return Err(TokenError::Empty(path.to_owned()));
    }
    Ok(out)
}

/// The token of an `Authorization: Bearer …` header, or the password of a `Basic` one (what
/// a browser sends for the page).
pub fn presented(header: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, rest) = header.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn tokens() -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().unwrap();
        let admin = file(
            &dir,
            "admin",
            "# operators\nadmin-token-0123456789\nauditor read-only auditor-token-0123456789\n",
        );
        let nodes = file(
            &dir,
            "nodes",
            "fleet-token-0123456789\nnode-a node-a-token-0123456789\n\n",
        );
        let tokens = Tokens::load(&admin, &nodes).unwrap();
        (dir, tokens)
    }

    #[test]
    fn callers_by_token() {
        let (_dir, tokens) = tokens();
        assert_eq!(
            tokens.caller("admin-token-0123456789"),
            Some(Caller::Operator(Operator {
                name: "operator-2".into(),
                role: Role::Operator
            }))
        );
        assert_eq!(
            tokens.caller("auditor-token-0123456789"),
            Some(Caller::Operator(Operator {
                name: "auditor".into(),
                role: Role::ReadOnly
            }))
        );
        assert_eq!(
            tokens.caller("fleet-token-0123456789"),
            Some(Caller::Node(NodeScope::AnyNode))
        );
        assert_eq!(
            tokens.caller("node-a-token-0123456789"),
            Some(Caller::Node(NodeScope::Node("node-a".into())))
        );
        assert_eq!(tokens.caller("admin-token-012345678"), None);
        assert_eq!(tokens.caller(""), None);
    }

    #[test]
    fn bad_token_files_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let admin = file(&dir, "admin", "admin-token-0123456789\n");
        let short = file(&dir, "short", "\nshort\n");
        let err = Tokens::load(&admin, &short).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "short:2: a token is at least 16 printable characters (e.g. `openssl rand -hex 32`)"
            ),
            "{err}"
        );
        let empty = file(&dir, "empty", "# nothing\n");
        assert!(matches!(
            Tokens::load(&admin, &empty),
            Err(TokenError::Empty(_))
        ));
        let three = file(&dir, "three", "a b cccccccccccccccccccc\n");
        assert!(Tokens::load(&admin, &three).is_err());
        let same = file(&dir, "same", "admin-token-0123456789\n");
        assert!(Tokens::load(&admin, &same).is_err());
        let fleet = file(&dir, "fleet", "fleet-token-0123456789\n");
        let role = file(&dir, "role", "ops admin op-token-0123456789012\n");
        let err = Tokens::load(&role, &fleet).unwrap_err().to_string();
        assert!(
            err.ends_with("role:1: `admin` is not a role: operator or read-only"),
            "{err}"
        );
        let twice = file(
            &dir,
            "twice",
            "ops operator op-token-0123456789012\nops read-only op-token-9876543210987\n",
        );
        let err = Tokens::load(&twice, &fleet).unwrap_err().to_string();
        assert!(err.ends_with("the name `ops` is given twice"), "{err}");
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let admin = file(&dir, "admin", "admin-token-0123456789\n");
        let nodes = file(&dir, "nodes", "fleet-token-0123456789\n");
        std::fs::set_permissions(&nodes, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Tokens::load(&admin, &nodes).unwrap_err().to_string();
        assert!(
            err.contains("nodes can be read by other users (mode 644)")
                && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn bearer_and_basic_headers() {
        assert_eq!(presented("Bearer abc").as_deref(), Some("abc"));
        // "x:secret" in base64.
        assert_eq!(presented("Basic eDpzZWNyZXQ=").as_deref(), Some("secret"));
        assert_eq!(presented("Digest abc"), None);
        assert_eq!(presented("Basic !!!"), None);
    }
}
