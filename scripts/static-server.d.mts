/** One request the server answered. */
export interface ServedRequest {
  path: string;
  range: string | null;
  status: number;
  bytes: number;
}
/** A running static server. */
export interface StaticServer {
  url: string;
  port: number;
  requests: ServedRequest[];
  close(): Promise<void>;
}
export function startStaticServer(options: { root: string; port?: number; ranges?: boolean; spaFallback?: boolean }): Promise<StaticServer>;
