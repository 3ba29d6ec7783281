//! `ingot users ...` and `ingot tokens ...`: the UserService RPCs.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use anyhow::{bail, Result};
use clap::{Subcommand, ValueEnum};
use ingot_proto::v1::{
    CreateTokenRequest, CreateUserRequest, DeleteUserRequest, ListTokensRequest, ListUsersRequest,
    RevokeTokenRequest, Role, UpdateUserRequest, User, WhoAmIRequest,
};
use serde_json::json;
use std::time::Duration;

/// What a user may do.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    /// Everything: enlist, delete, zones, pools, tags, users
    Admin,
    /// Sees the pool and their own machines; allocates, deploys and releases what they own
    User,
}

impl RoleArg {
    fn wire(self) -> i32 {
        match self {
            RoleArg::Admin => Role::Admin as i32,
            RoleArg::User => Role::User as i32,
        }
    }
}

/// The `users` subcommands.
#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// List users with their roles and machine counts (admin)
    List,
    /// Create a user (admin); give them a token with `ingot tokens create --user NAME`
    Create {
        /// User name: letters, digits, '-', '_' and '.'
        name: String,
        /// Role
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
    },
    /// Change a user's role (admin)
    Update {
        /// User name
        name: String,
        /// New role
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Delete a user and revoke their tokens (refused while they own machines; admin)
    Delete {
        /// User name
        name: String,
    },
    /// Who the current token belongs to
    Whoami,
}

/// The `tokens` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// List API tokens (yours by default)
    List {
        /// Another user's tokens (admin)
        #[arg(long, value_name = "USER", conflicts_with = "all")]
        user: Option<String>,
        /// Everyone's tokens (admin)
        #[arg(long)]
        all: bool,
    },
    /// Create an API token; the secret is printed once
    Create {
        /// For another user (admin; default: yourself)
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// What the token is for
        #[arg(long)]
        description: Option<String>,
        /// Lifetime, e.g. 1h, 30d (default: never expires)
        #[arg(long, value_name = "DURATION", value_parser = crate::parse::parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Revoke a token (it stops working on every region at once)
    Revoke {
        /// Token id (see `ingot tokens list`)
        id: String,
    },
}

fn show_user(ctx: &Ctx, u: &User) {
    if ctx.json() {
        print_json(&output::user_json(u));
    } else {
        outln!("{}", output::render(&output::user_record(u)));
    }
}

/// Runs a `users` subcommand.
pub async fn run_users(ctx: &Ctx, cmd: UsersCmd) -> Result<()> {
    let clients = ctx.clients()?;
    match cmd {
        UsersCmd::List => {
            let resp = ctx
                .call(|| {
                    let mut c = clients.users();
                    async move { c.list_users(ListUsersRequest {}).await }
                })
                .await?;
            if ctx.json() {
                let users: Vec<_> = resp.users.iter().map(output::user_json).collect();
                print_json(&json!({ "users": users }));
            } else {
                let mut t = output::table(["NAME", "ROLE", "MACHINES", "TOKENS", "CREATED"]);
                for u in &resp.users {
                    t.add_row(vec![
                        u.name.clone(),
                        output::user_role_name(u.role),
                        u.machine_count.to_string(),
                        u.token_count.to_string(),
                        output::ts(&u.created_at),
                    ]);
                }
                outln!("{}", output::render(&t));
            }
        }
        UsersCmd::Create { name, role } => {
            let req = CreateUserRequest {
                name,
                role: role.wire(),
            };
            let u = ctx
                .call(|| {
                    let mut c = clients.users();
                    let req = req.clone();
                    async move { c.create_user(req).await }
                })
                .await?;
            show_user(ctx, &u);
            if !ctx.json() {
                eprintln!("give them a token: ingot tokens create --user {}", u.name);
            }
        }
        UsersCmd::Update { name, role } => {
            let req = UpdateUserRequest {
                name,
                role: role.wire(),
            };
            let u = ctx
                .call(|| {
                    let mut c = clients.users();
                    let req = req.clone();
                    async move { c.update_user(req).await }
                })
                .await?;
            show_user(ctx, &u);
        }
        UsersCmd::Delete { name } => {
            ctx.call(|| {
                let mut c = clients.users();
                let req = DeleteUserRequest { name: name.clone() };
                async move { c.delete_user(req).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({ "deleted": name }));
            } else {
                outln!("deleted user {name} and revoked their tokens");
            }
        }
        UsersCmd::Whoami => {
            let u = ctx
                .call(|| {
                    let mut c = clients.users();
                    async move { c.who_am_i(WhoAmIRequest {}).await }
                })
                .await?;
            show_user(ctx, &u);
        }
    }
    Ok(())
}

/// Runs a `tokens` subcommand.
pub async fn run_tokens(ctx: &Ctx, cmd: TokensCmd) -> Result<()> {
    let clients = ctx.clients()?;
    match cmd {
        TokensCmd::List { user, all } => {
            let req = ListTokensRequest {
                user: user.unwrap_or_default(),
                all,
            };
            let resp = ctx
                .call(|| {
                    let mut c = clients.users();
                    let req = req.clone();
                    async move { c.list_tokens(req).await }
                })
                .await?;
            if ctx.json() {
                let tokens: Vec<_> = resp.tokens.iter().map(output::token_json).collect();
                print_json(&json!({ "tokens": tokens }));
            } else {
                let mut t = output::table(["ID", "USER", "DESCRIPTION", "CREATED", "EXPIRES"]);
                for tok in &resp.tokens {
                    t.add_row(vec![
                        tok.id.clone(),
                        tok.user.clone(),
                        output::dash(&tok.description),
                        output::ts(&tok.created_at),
                        match &tok.expires_at {
                            Some(_) => output::ts(&tok.expires_at),
                            None => "never".into(),
                        },
                    ]);
                }
                outln!("{}", output::render(&t));
            }
        }
        TokensCmd::Create {
            user,
            description,
            ttl,
        } => {
            let req = CreateTokenRequest {
                user: user.unwrap_or_default(),
                description: description.unwrap_or_default(),
                ttl_seconds: ttl.map(|d| d.as_secs()).unwrap_or(0),
            };
            let resp = ctx
                .call(|| {
                    let mut c = clients.users();
                    let req = req.clone();
                    async move { c.create_token(req).await }
                })
                .await?;
            let Some(tok) = resp.token else {
                bail!("the region returned no token record");
            };
            if ctx.json() {
                print_json(&json!({
                    "token": output::token_json(&tok),
                    "secret": resp.secret,
                }));
            } else {
                outln!("{}", resp.secret);
                let expires = match &tok.expires_at {
                    Some(_) => format!("expires {}", output::ts(&tok.expires_at)),
                    None => "never expires".into(),
                };
                eprintln!(
                    "token {} for {} ({expires}). Store the secret above now: it is not shown again \
                     (use it as --token or INGOT_TOKEN; revoke with `ingot tokens revoke {}`)",
                    tok.id, tok.user, tok.id
                );
            }
        }
        TokensCmd::Revoke { id } => {
            ctx.call(|| {
                let mut c = clients.users();
                let req = RevokeTokenRequest { id: id.clone() };
                async move { c.revoke_token(req).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({ "revoked": id }));
            } else {
                outln!("revoked token {id}");
            }
        }
    }
    Ok(())
}
