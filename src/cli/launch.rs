//! `reward-worker launch RECIPE.toml [SERVE FLAGS...]`: start the service from a
//! training recipe (see `recipe`). The recipe becomes `serve` flags; flags
//! after the recipe override them (the last one given wins).

use clap::{Args, Parser};
use std::path::PathBuf;

use super::serve::{self, ServeArgs};
use crate::recipe::LoadedRecipe;

#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// `serve` flags that override the recipe, e.g. `--port 0`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub overrides: Vec<String>,
    /// Check the recipe (keys, types, layout against the model config), print the flags and exit.
    #[arg(long)]
    pub check: bool,
}

/// `serve`'s flags, each allowed more than once (the last wins).
#[derive(Parser, Debug)]
#[command(name = "reward-worker launch", args_override_self = true, no_binary_name = true)]
struct RecipeFlags {
    #[command(flatten)]
    serve: ServeArgs,
}

pub fn run(args: LaunchArgs) -> Result<i32, String> {
    let recipe = LoadedRecipe::read(&args.recipe).map_err(|e| e.to_string())?;
    let mut flags = recipe.to_args();
    flags.extend(args.overrides.iter().cloned());
    let parsed = RecipeFlags::try_parse_from(&flags)
        .map_err(|e| format!("recipe {} with flags {flags:?}: {e}", args.recipe.display()))?;
    if args.check {
        println!("{}", flags.join(" "));
        return Ok(0);
    }
    tracing::info!(recipe = %args.recipe.display(), flags = %flags.join(" "), "launching");
    serve::run(parsed.serve)
}
