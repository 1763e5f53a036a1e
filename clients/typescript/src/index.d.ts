// Public types of the Amber client. Request/response shapes come from ./api-types (generated from
// docs/openapi.json by `npm run generate`).
import type {
  AppendOut, AuditPage, FactIn, FactOut, HitOut, ImportOut, MessageIn, MessageOut, ReceiptOut,
  SessionOut, SessionPage, StateOut, UserPage,
} from "./api-types";

export * from "./api-types";

export declare class AmberError extends Error {
  readonly status: number;
  readonly code: string;
}

export interface ClientOptions {
  baseUrl: string;
  apiKey: string;
  fetch?: typeof fetch;
  retries?: number;
}

export type StateWithEtag = StateOut & { etag: string | null };

export declare class AmberSession {
  readonly user: string;
  readonly thread: string;
  append(messages: MessageIn | MessageIn[], options?: { idempotencyKey?: string }): Promise<AppendOut>;
  window(options?: { last?: number; maxTokens?: number }): Promise<MessageOut[]>;
  since(afterSeq?: number, options?: { pageSize?: number }): Promise<MessageOut[]>;
  info(): Promise<SessionOut>;
  forget(): Promise<ReceiptOut>;
  correctMessage(id: string, content: string, options?: { reason?: string }): Promise<MessageOut>;
  deleteMessage(id: string): Promise<void>;
  getState(name: string): Promise<StateWithEtag | null>;
  putState(name: string, data: Record<string, unknown>, options?: { ifMatch?: string; ifNoneMatch?: "*" }): Promise<StateWithEtag>;
}

export declare class AmberClient {
  constructor(options: ClientOptions);
  session(user: string, thread: string): AmberSession;
  sessions(options?: { user?: string; limit?: number; offset?: number }): Promise<SessionPage>;
  users(options?: { limit?: number; offset?: number }): Promise<UserPage>;
  facts(user: string, options?: { attribute?: string; includeSuperseded?: boolean; limit?: number }): Promise<FactOut[]>;
  recordFact(user: string, fact: FactIn): Promise<FactOut>;
  fact(user: string, id: string): Promise<FactOut>;
  deleteFact(user: string, id: string): Promise<void>;
  recall(user: string, query: string, options?: { limit?: number; kinds?: Array<"message" | "fact"> }): Promise<HitOut[]>;
  forgetUser(user: string): Promise<ReceiptOut>;
  exportJsonl(options?: { user?: string; thread?: string }): Promise<string>;
  importJsonl(text: string): Promise<ImportOut>;
  audit(options?: { user?: string; operation?: string; afterId?: number; limit?: number }): Promise<AuditPage>;
}
