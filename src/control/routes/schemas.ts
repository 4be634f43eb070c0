import { errorSchema } from "../http-error.js";

/** Route schema pieces several resources share. */
export const authErrors = { 401: errorSchema, 403: errorSchema, 404: errorSchema } as const;

/** `:id` path parameters: an id or a name. */
export const idParams = {
  type: "object",
  required: ["id"],
  additionalProperties: false,
  properties: { id: { type: "string", minLength: 1, maxLength: 253 } },
} as const;

export const anyObject = { type: "object", additionalProperties: true } as const;
