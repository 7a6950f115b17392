//! The admin commands only the running server answers (status, reload,
//! agent states through the desk, queue changes), and the server's status.
//!
//! Room: the switchboard's office. Reached from the admin socket and the
//! API through [`Shared::live`], on a blocking thread; it touches the
//! store, the desk (by message), the catalog and the figures the other
//! rooms keep.

use super::*;

impl Shared {
    /// Admin commands that need the running server (status, reload, agent
    /// states) or must reach the ACD after the store; `None`: the store alone
    /// answers. Runs on a blocking thread.
    pub fn live(self: &Arc<Self>, cmd: &AdminCommand) -> Option<Result<serde_json::Value, String>> {
        // A route, plan or account naming a queue or flow nobody declared
        // is refused before anything is written.
        if cmd.names_things() {
            if let Err(e) = self.names(cmd).check(cmd) {
                return Some(Err(format!("{e}; nothing was changed")));
            }
        }
        let runtime = tokio::runtime::Handle::current();
        match cmd {
            AdminCommand::Status => {
                let mut v = self.status();
                let (agents, queues) = runtime.block_on(self.acd.views());
                let mut states = std::collections::BTreeMap::<&str, usize>::new();
                for a in &agents {
                    *states.entry(a.state).or_default() += 1;
                }
                v["agents"] = serde_json::json!(states);
                v["queues"] = serde_json::json!(queues);
                Some(Ok(v))
            }
            AdminCommand::Reload => Some(self.reload()),
            AdminCommand::Originate {
                number,
                agent,
                queue,
                flow,
                hotline,
                data,
            } => {
                let placed = runtime.block_on(crate::call::originate(
                    &self.house,
                    crate::call::Originate {
                        number: number.clone(),
                        agent: agent.clone(),
                        queue: queue.clone(),
                        flow: flow.clone(),
                        hotline: hotline.clone(),
                        data: data.clone(),
                    },
                ));
                Some(placed.map(|call_id| serde_json::json!({ "call_id": call_id })))
            }
            AdminCommand::FlowsValidate => {
                let loaded = crate::ivr::load(&self.settings, &self.queues());
                Some(Ok(serde_json::json!({
                    "ok": loaded.errors() == 0,
                    "errors": loaded.errors(),
                    "warnings": loaded.diagnostics.len() - loaded.errors(),
                    "flows": loaded.catalog.flows.len(),
                    "prompts": loaded.catalog.prompts.len(),
                    "calendars": loaded.catalog.calendars.len(),
                    "diagnostics": loaded.diagnostics,
                })))
            }
            AdminCommand::Flows => {
                let catalog = self.catalog();
                let mut flows: Vec<_> = catalog.flows.values().collect();
                flows.sort_by(|a, b| a.name.cmp(&b.name));
                let flows: Vec<_> = flows
                    .into_iter()
                    .map(|f| {
                        serde_json::json!({
                            "name": f.name,
                            "file": f.file,
                            "description": f.description,
                            "nodes": f.nodes.len(),
                        })
                    })
                    .collect();
                Some(Ok(serde_json::json!({
                    "version": self.catalog_version.load(Relaxed),
                    "flows": flows,
                })))
            }
            AdminCommand::CallsList => Some(Ok(serde_json::json!(self.calls.list()))),
            AdminCommand::CallsHangup { id } => Some(
                runtime
                    .block_on(self.calls.send(id, crate::call::Control::Hangup))
                    .map_err(|(_, why)| why),
            ),
            AdminCommand::QueuesList => {
                // The store's keys beside the desk's figures now.
                let (_, views) = runtime.block_on(self.acd.views());
                Some(self.execute(cmd).map(|mut list| {
                    for q in list.as_array_mut().into_iter().flatten() {
                        let live = views.iter().find(|v| q["name"] == v.name.as_str());
                        if let (Some(fields), Some(live)) = (q.as_object_mut(), live) {
                            if let serde_json::Value::Object(figures) = serde_json::json!(live) {
                                // `strategy` here is the one in force.
                                fields.extend(figures);
                            }
                        }
                    }
                    list
                }))
            }
            AdminCommand::QueuesSet { name, .. } => Some(self.execute_queue(cmd, name)),
            AdminCommand::QueuesRemove { name } => {
                // The store's refusals first, then the desk's (callers in
                // line), then the store's removal.
                let queues = self.queues();
                let in_use = crate::admin::queue_in_use(&self.store, &queues, name);
                match in_use {
                    Err(e) => return Some(Err(format!("{e:#}"))),
                    Ok(Some(why)) => return Some(Err(why)),
                    Ok(None) => {}
                }
                if queues.contains_key(name) {
                    if let Err(why) = runtime.block_on(self.acd.remove_queue(name)) {
                        return Some(Err(why));
                    }
                }
                Some(self.execute_queue(cmd, name))
            }
            AdminCommand::Report { .. }
            | AdminCommand::Cdrs { .. }
            | AdminCommand::QueueLog { .. } => {
                // Read what happened up to now: write the pending batch first.
                runtime.block_on(self.records.flush());
                None
            }
            AdminCommand::AgentsAdd { id, .. } | AdminCommand::AgentsRemove { id } => {
                let r = self.execute(cmd);
                self.acd.touch(id, false);
                Some(r)
            }
            AdminCommand::AgentsState { id, change } => {
                use crate::admin::SeatChange;
                let r = match change {
                    SeatChange::Presence(p) => {
                        runtime.block_on(self.acd.set_presence(id, p.clone()))
                    }
                    SeatChange::EndWrapUp => runtime.block_on(self.acd.end_wrap_up(id)),
                };
                Some(r.map(|()| serde_json::json!({ "agent": id, "state": change.word() })))
            }
            AdminCommand::AgentsList => {
                let listed = self.execute(cmd);
                let (agents, _) = runtime.block_on(self.acd.views());
                Some(listed.map(|mut v| {
                    // The desk knows the live state (ringing, on-call, wrap-up).
                    if let Some(list) = v.as_array_mut() {
                        for entry in list {
                            let id = entry["id"].as_str().unwrap_or_default().to_string();
                            if let Some(a) = agents.iter().find(|a| a.id == id) {
                                entry["state"] = a.state.into();
                                entry["reason"] = a.reason.clone().into();
                                entry["misses"] = a.misses.into();
                                entry["since"] = a.since.into();
                                entry["registered"] = a.registered.into();
                            }
                        }
                    }
                    v
                }))
            }
            _ => None,
        }
    }

    /// Live figures for `yihaotong status`.
    pub fn status(&self) -> serde_json::Value {
        let load = crate::overload::Load {
            live_calls: self.live_calls.load(Relaxed),
            backlog: self
                .fresh
                .iter()
                .map(|f| f.max_capacity() - f.capacity())
                .max()
                .unwrap_or(0),
            media: self.engine.stats.pressure(),
        };
        serde_json::json!({
            "overload": self.overload.snapshot(load),
            "backends": self.backends.snapshot(),
            "tcp_connections": self.sockets.open_connections(),
            "calls_by_state": self.calls.count_by_state(),
            "process": crate::meters::process_figures(),
            "transactions": self.transactions.iter().map(|t| t.load(Relaxed)).sum::<usize>(),
            "webhooks": self
                .webhooks
                .lock()
                .map(|w| serde_json::json!(*w))
                .unwrap_or_default(),
            "auth": self
                .registrar
                .lock()
                .map(|r| r.auth_figures(now_unix()))
                .unwrap_or_default(),
            "live_calls": self.live_calls.load(std::sync::atomic::Ordering::Relaxed),
            "draining": self.draining.load(Relaxed),
            "rtp_ports_free": self.ports.available(),
            "rtp_ports_total": self.ports.total(),
            "flows": self.catalog().flows.len(),
            "catalog_version": self.catalog_version.load(Relaxed),
            "prompts": self.catalog().prompts.len(),
            "media": {
                "streams": self.engine.stats.streams.load(Relaxed),
                "bridges": self.engine.stats.bridges.load(Relaxed),
                "ticks": self.engine.stats.ticks.load(Relaxed),
                "late_ticks_over_2ms": self.engine.stats.late_ticks.load(Relaxed),
                "max_late_us": self.engine.stats.max_late_us.load(Relaxed),
                "late_p50_us_at_most": self.engine.stats.late_quantile_us(0.5),
                "late_p99_us_at_most": self.engine.stats.late_quantile_us(0.99),
                "late_p999_us_at_most": self.engine.stats.late_quantile_us(0.999),
                "packets_sent": self.engine.stats.sent.load(Relaxed),
                "keys_heard": self.engine.stats.digits.load(Relaxed),
                "recording_queued_bytes": crate::media::recording::queued_bytes(),
                "recording_dropped_bytes": crate::media::recording::dropped_bytes(),
            },
        })
    }

    /// Loads flows, prompts and calendars again and, if nothing has an
    /// error, makes them the version new calls get. Calls in progress keep
    /// theirs. On any error the running version stays and the errors are
    /// logged and returned.
    pub fn reload(&self) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let loaded = crate::ivr::load(&self.settings, &self.queues());
        for d in &loaded.diagnostics {
            tracing::warn!("{d}");
        }
        if loaded.errors() > 0 {
            tracing::error!(
                errors = loaded.errors(),
                "reload refused; the running flows stay"
            );
            let list: Vec<String> = loaded
                .diagnostics
                .iter()
                .filter(|d| !d.warning)
                .map(|d| d.to_string())
                .collect();
            return Err(format!(
                "reload refused, the running flows stay:\n{}",
                list.join("\n")
            ));
        }
        let c = loaded.catalog;
        let summary = serde_json::json!({
            "flows": c.flows.len(),
            "prompts": c.prompts.len(),
            "calendars": c.calendars.len(),
            "warnings": loaded.diagnostics.len(),
            "millis": started.elapsed().as_millis() as u64,
        });
        match self.catalog.write() {
            Ok(mut slot) => *slot = Arc::new(c),
            Err(p) => *p.into_inner() = Arc::new(c),
        }
        let version = self.catalog_version.fetch_add(1, Relaxed) + 1;
        tracing::info!(version, %summary, "flows and prompts reloaded");
        Ok(summary)
    }

    /// Carries out `cmd` against the store, as the CLI would with no server.
    fn execute(&self, cmd: &AdminCommand) -> Result<serde_json::Value, String> {
        crate::admin::execute(
            &self.store,
            &self.settings.sip.domain,
            cmd.clone(),
            now_unix(),
        )
        .map_err(|e| format!("{e:#}"))
    }

    /// Carries out a change of queue `name`, then serves whatever the store
    /// holds now (the change, or on an error what was there).
    fn execute_queue(&self, cmd: &AdminCommand, name: &str) -> Result<serde_json::Value, String> {
        let r = self.execute(cmd);
        let read = self.queues_changed(name);
        r.and_then(|v| read.map(|()| v))
    }

    /// Reads the queues from the store again after a change; the desk is
    /// told of `changed` (set or gone).
    fn queues_changed(&self, changed: &str) -> Result<(), String> {
        let queues = self.store.queues().map_err(|e| format!("{e:#}"))?;
        if let Some(def) = queues.get(changed) {
            self.acd
                .set_queue(changed, crate::acd::queue_rules(&self.settings, Some(def)));
        }
        match self.queues.write() {
            Ok(mut slot) => *slot = Arc::new(queues),
            Err(p) => *p.into_inner() = Arc::new(queues),
        }
        Ok(())
    }

    /// The queues, flows and prompts in service: what `cmd` may name. The
    /// flow files are parsed for the queues they name, and the prompt names
    /// gathered, only for the commands whose check reads them.
    pub fn names(&self, cmd: &AdminCommand) -> crate::admin::Names {
        let catalog = self.catalog();
        crate::admin::Names {
            queues: self.queues().keys().cloned().collect(),
            flows: catalog.flows.keys().cloned().collect(),
            flow_queues: if cmd.checks_flow_queues() {
                crate::ivr::flow_queue_refs(&self.settings.flows_dir)
            } else {
                Default::default()
            },
            prompts: if cmd.checks_prompts() {
                catalog.prompts.names().into_iter().collect()
            } else {
                Default::default()
            },
            outbound: !self.settings.trunk.outbound.is_empty(),
        }
    }
}
