import type { ComponentChildren } from "preact";
import { useEffect, useRef } from "preact/hooks";
import type { ApiError } from "../api.js";
import { title } from "../format.js";

export type Tone = "ok" | "warn" | "bad" | "info" | "muted";

export function Badge(props: { tone: Tone; children: ComponentChildren; title?: string }) {
  return (
    <span class={`badge badge-${props.tone}`} title={props.title}>
      {props.children}
    </span>
  );
}

/** DRS and job states, coloured by what an operator should do about them. */
export function stateTone(state: string): Tone {
  switch (state) {
    case "CONTINUOUS":
    case "succeeded":
    case "ONLINE":
      return "ok";
    case "INITIAL_SYNC":
    case "INITIATING":
    case "RESCAN":
    case "BACKLOG":
    case "running":
    case "pending":
      return "info";
    case "STALLED":
    case "DISCONNECTED":
    case "failed":
      return "bad";
    case "STOPPED":
    case "DECOMMISSIONED":
    case "terminated":
      return "muted";
    default:
      return "warn";
  }
}

export function StateBadge(props: { state: string }) {
  return <Badge tone={stateTone(props.state)}>{title(props.state)}</Badge>;
}

export function Card(props: {
  title?: string;
  actions?: ComponentChildren;
  children: ComponentChildren;
  class?: string;
}) {
  return (
    <section class={`card ${props.class ?? ""}`}>
      {props.title !== undefined || props.actions !== undefined ? (
        <header class="card-head">
          {props.title !== undefined ? <h2>{props.title}</h2> : <span />}
          {props.actions}
        </header>
      ) : null}
      <div class="card-body">{props.children}</div>
    </section>
  );
}

export function Empty(props: { title: string; children?: ComponentChildren }) {
  return (
    <div class="empty">
      <div class="empty-mark" aria-hidden="true" />
      <p class="empty-title">{props.title}</p>
      {props.children !== undefined ? <p class="empty-text">{props.children}</p> : null}
    </div>
  );
}

export function Loading() {
  return <div class="loading">Loading…</div>;
}

export function ErrorNote(props: { error: ApiError | Error }) {
  const e = props.error as Partial<ApiError> & Error;
  return (
    <div class="note note-bad" role="alert">
      <strong>{e.code ? `${e.code}: ` : ""}</strong>
      {e.message}
      {e.hint ? <div class="note-hint">{e.hint}</div> : null}
    </div>
  );
}

export function Stat(props: { label: string; children: ComponentChildren; tone?: Tone }) {
  return (
    <div class={`stat ${props.tone ? `stat-${props.tone}` : ""}`}>
      <div class="stat-label">{props.label}</div>
      <div class="stat-value">{props.children}</div>
    </div>
  );
}

/** A modal confirmation (the native <dialog>): nothing happens until the operator confirms. */
export function Confirm(props: {
  open: boolean;
  title: string;
  confirmLabel: string;
  danger?: boolean;
  busy?: boolean;
  onConfirm: () => void;
  onCancel: () => void;
  children: ComponentChildren;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (props.open && !d.open) d.showModal();
    if (!props.open && d.open) d.close();
  }, [props.open]);
  return (
    <dialog ref={ref} class="dialog" onCancel={props.onCancel}>
      <h2>{props.title}</h2>
      <div class="dialog-body">{props.children}</div>
      <div class="dialog-actions">
        <button type="button" class="btn" onClick={props.onCancel} disabled={props.busy}>
          Cancel
        </button>
        <button
          type="button"
          class={`btn ${props.danger ? "btn-danger" : "btn-primary"}`}
          onClick={props.onConfirm}
          disabled={props.busy}
        >
          {props.confirmLabel}
        </button>
      </div>
    </dialog>
  );
}
