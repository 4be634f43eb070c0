import type { FastifyError, FastifyInstance } from "fastify";
import { LifeboatError, isLifeboatError } from "../base/index.js";

/** A LifeboatError an HTTP route answers with, and the status it answers with. */
export type HttpError = LifeboatError & { statusCode: number };

export function httpError(statusCode: number, code: string, message: string, hint = ""): HttpError {
  return Object.assign(new LifeboatError(code, message, { hint }), { statusCode });
}

/** Statuses for codes raised below the HTTP layer. */
const STATUS_BY_CODE: Record<string, number> = {
  NET_CSR_INVALID: 400,
  NET_CERT_PARAMS_INVALID: 400,
  DB_UNREACHABLE: 503,
};

export const errorSchema = {
  type: "object",
  required: ["code", "message", "hint"],
  properties: { code: { type: "string" }, message: { type: "string" }, hint: { type: "string" } },
} as const;

/**
 * The one error handler: every error leaves as {code, message, hint} with a
 * stable code. Validation → 400 REQUEST_INVALID naming the field, bodies over
 * the limit → 413 REQUEST_TOO_LARGE, rate limits → 429 RATE_LIMITED, unknown
 * routes → 404 NOT_FOUND; anything not understood is logged and answered
 * with a bare 500 INTERNAL.
 */
export function installErrorHandling(app: FastifyInstance): void {
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({
      code: "NOT_FOUND",
      message: `no route ${request.method} ${request.url.split("?")[0]}`,
      hint: "see /api/v1/openapi.json",
    });
  });
  app.setErrorHandler((err: FastifyError | LifeboatError, request, reply) => {
    const e = toHttpError(err);
    if (e.statusCode >= 500) request.log.error({ err }, "request failed");
    else request.log.info({ code: e.code, status: e.statusCode }, "request refused");
    void reply.code(e.statusCode).send(e.toJSON());
  });
}

function toHttpError(err: FastifyError | LifeboatError): HttpError {
  if (isLifeboatError(err)) {
    // A status set where the error was made (httpError, ClientCertError) is meant for the client;
    // a LifeboatError from below without one is a failure the client cannot act on.
    const status = (err as Partial<HttpError>).statusCode ?? STATUS_BY_CODE[err.code];
    if (status === undefined) return httpError(500, "INTERNAL", "the server failed; the error is in its log");
    return Object.assign(err, { statusCode: status });
  }
  const f = err;
  if (f.validation) {
    const where = f.validationContext ?? "body";
    const first = f.validation[0];
    const field = first?.instancePath ? `${where}${first.instancePath.replace(/\//g, ".")}` : where;
    const missing = (first?.params as { missingProperty?: string } | undefined)?.missingProperty;
    const extra = (first?.params as { additionalProperty?: string } | undefined)?.additionalProperty;
    const name = missing ? `${field}.${missing}` : extra ? `${field}.${extra}` : field;
    return httpError(
      400,
      "REQUEST_INVALID",
      `${name}: ${extra ? "is not allowed" : (first?.message ?? "is invalid")}`,
      "fix the request; the API is described at /api/v1/openapi.json",
    );
  }
  switch (f.code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return httpError(
        413,
        "REQUEST_TOO_LARGE",
        "the request body is too large",
        "send less; requests are small JSON documents",
      );
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return httpError(415, "REQUEST_INVALID", "the body must be application/json", "send JSON");
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      return httpError(400, "REQUEST_INVALID", "the body is not valid JSON", "send JSON");
  }
  if (f.statusCode === 429)
    return httpError(
      429,
      "RATE_LIMITED",
      "too many requests from this address",
      "wait a minute and try again",
    );
  if (typeof f.statusCode === "number" && f.statusCode >= 400 && f.statusCode < 500)
    return httpError(f.statusCode, "REQUEST_INVALID", f.message, "fix the request");
  return httpError(500, "INTERNAL", "the server failed; the error is in its log");
}
