//! `ingot tags ...`: one command per TagService RPC.

use crate::ctx::Ctx;
use crate::output::{self, print_json};
use crate::target::consistency;
use anyhow::{bail, Result};
use clap::Subcommand;
use ingot_proto::v1::{
    CreateTagRequest, DeleteTagRequest, GetTagRequest, ListTagsRequest, Tag, UpdateTagRequest,
};
use serde_json::json;

/// The `tags` subcommands.
#[derive(Subcommand, Debug)]
pub enum TagsCmd {
    /// List tags with their machine counts
    List {
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Show one tag
    Show {
        /// Tag name
        name: String,
        /// Answer from the serving region's local state (may lag recent writes)
        #[arg(long)]
        stale: bool,
    },
    /// Create a tag (admin): manual, or defined by an expression over the inventory
    Create {
        /// Tag name: letters, digits, '-' and '_'
        name: String,
        /// Applies the tag to exactly the machines matching this expression, e.g.
        /// 'cpu_count >= 16 && any(disks, size_gib >= 900 && !rotational)'
        #[arg(long, value_name = "EXPR")]
        definition: Option<String>,
        /// Free text
        #[arg(long)]
        comment: Option<String>,
    },
    /// Change a tag's definition (re-evaluated on every machine) or comment (admin)
    Update {
        /// Tag name
        name: String,
        /// New definition; '' makes the tag manual
        #[arg(long, value_name = "EXPR")]
        definition: Option<String>,
        /// New comment
        #[arg(long)]
        comment: Option<String>,
    },
    /// Delete a tag, removing it from every machine (admin)
    Delete {
        /// Tag name
        name: String,
    },
}

fn show(ctx: &Ctx, t: &Tag) {
    if ctx.json() {
        print_json(&output::tag_json(t));
    } else {
        outln!("{}", output::render(&output::tag_record(t)));
    }
}

/// Runs a `tags` subcommand.
pub async fn run(ctx: &Ctx, cmd: TagsCmd) -> Result<()> {
    let clients = ctx.clients()?;
    match cmd {
        TagsCmd::List { stale } => {
            let resp = ctx
                .call(|| {
                    let mut c = clients.tags();
                    let req = ListTagsRequest {
                        consistency: consistency(stale),
                    };
                    async move { c.list_tags(req).await }
                })
                .await?;
            if ctx.json() {
                let tags: Vec<_> = resp.tags.iter().map(output::tag_json).collect();
                print_json(&json!({ "tags": tags }));
            } else {
                let mut t = output::table(["NAME", "MACHINES", "DEFINITION", "COMMENT"]);
                for tag in &resp.tags {
                    t.add_row(vec![
                        tag.name.clone(),
                        tag.machine_count.to_string(),
                        if tag.definition.is_empty() {
                            "(manual)".into()
                        } else {
                            tag.definition.clone()
                        },
                        tag.comment.clone(),
                    ]);
                }
                outln!("{}", output::render(&t));
            }
        }
        TagsCmd::Show { name, stale } => {
            let t = ctx
                .call(|| {
                    let mut c = clients.tags();
                    let req = GetTagRequest {
                        name: name.clone(),
                        consistency: consistency(stale),
                    };
                    async move { c.get_tag(req).await }
                })
                .await?;
            show(ctx, &t);
        }
        TagsCmd::Create {
            name,
            definition,
            comment,
        } => {
            let req = CreateTagRequest {
                name,
                definition: definition.unwrap_or_default(),
                comment: comment.unwrap_or_default(),
            };
            let t = ctx
                .call(|| {
                    let mut c = clients.tags();
                    let req = req.clone();
                    async move { c.create_tag(req).await }
                })
                .await?;
            show(ctx, &t);
        }
        TagsCmd::Update {
            name,
            definition,
            comment,
        } => {
            if definition.is_none() && comment.is_none() {
                bail!("nothing to change: pass --definition and/or --comment");
            }
            let req = UpdateTagRequest {
                name,
                definition,
                comment,
            };
            let t = ctx
                .call(|| {
                    let mut c = clients.tags();
                    let req = req.clone();
                    async move { c.update_tag(req).await }
                })
                .await?;
            show(ctx, &t);
        }
        TagsCmd::Delete { name } => {
            ctx.call(|| {
                let mut c = clients.tags();
                let req = DeleteTagRequest { name: name.clone() };
                async move { c.delete_tag(req).await }
            })
            .await?;
            if ctx.json() {
                print_json(&json!({ "deleted": name }));
            } else {
                outln!("deleted tag {name}");
            }
        }
    }
    Ok(())
}
