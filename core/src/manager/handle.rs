//! A shared handle to a loaded model. While any handle (or a session made
//! from one) is alive the manager will not free the model; dropping the last
//! one makes it evictable, or unloads it if an unload was requested.
use super::manager::LoadReport;
use super::state::{lock, Inner};
use crate::error::Result;
use crate::generate::{GenerateOptions, GenerationResult, Session, StreamEvent};
use crate::model::Model;
use std::ops::Deref;
use std::sync::Arc;

pub struct ModelHandle {
    pub(crate) model: Option<Arc<Model>>,
    pub(crate) name: String,
    pub(crate) inner: Arc<Inner>,
    pub(crate) report: LoadReport,
}

impl ModelHandle {
    /// The registry name of the model this handle holds (after any fallback).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The shared model. A clone of this Arc also keeps the model in use.
    pub fn model(&self) -> &Arc<Model> {
        self.model.as_ref().expect("model present until drop")
    }
    /// What acquiring did: loaded now or found loaded, fallback, measured memory, evictions.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }
    pub fn session(&self) -> Session {
        Session::new(self.model().clone())
    }
    /// Generate with a new session. Like every generation on a managed model
    /// (sessions, C and Python included), it counts in the usage statistics.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_event: &mut dyn FnMut(&StreamEvent) -> bool,
    ) -> Result<GenerationResult> {
        self.session().generate(prompt, opts, on_event)
    }
}

impl Deref for ModelHandle {
    type Target = Model;
    fn deref(&self) -> &Model {
        self.model()
    }
}

impl Clone for ModelHandle {
    fn clone(&self) -> Self {
        if let Some(s) = lock(&self.inner.state).slots.get_mut(&self.name) {
            s.handles += 1;
        }
        ModelHandle {
            model: self.model.clone(),
            name: self.name.clone(),
            inner: self.inner.clone(),
            report: self.report.clone(),
        }
    }
}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        // Let go of the model first so the release sees the true use count.
        drop(self.model.take());
        self.inner.release(&self.name);
    }
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle").field("name", &self.name).finish()
    }
}
