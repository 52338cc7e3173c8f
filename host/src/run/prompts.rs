//! A chunk's prompts: each row's input column as it is, or the prompt
//! template rendered over its columns by the component, so that every host
//! of the component renders a template the same way.

use super::RunError;
use crate::bindings::Config;
use crate::dataset::{Chunk, Input};
use crate::plugin::Session;

/// Turns `chunk`'s inputs into prompts in place. Returns, per row, why it
/// has no prompt (its template failed to render: the row fails in place and
/// is sent nowhere), or `None`.
pub(super) async fn render(
    session: &mut Session,
    config: &Config,
    input: &Input,
    chunk: &mut Chunk,
) -> Result<Vec<Option<String>>, RunError> {
    if let Input::Column(_) = input {
        return Ok(vec![None; chunk.len()]);
    }
    let rendered = session.render_prompts(config, &chunk.inputs).await?;
    Ok(chunk
        .inputs
        .iter_mut()
        .zip(rendered)
        .map(|(input, prompt)| match prompt {
            Ok(prompt) => {
                *input = prompt;
                None
            }
            Err(message) => Some(message),
        })
        .collect())
}
