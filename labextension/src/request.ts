import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A reply of the server extension: `data` is undefined for a 304 (nothing changed since `etag`). */
export interface IReply<T> {
  status: number;
  data?: T;
  etag: string | null;
}

/**
 * Call a route of the mlops_jupyter server extension. makeRequest adds the token and XSRF headers,
 * so the server's authentication applies. Rejects with the server's `message` on a non-2xx reply
 * (the ResponseError keeps the response, so callers can tell a 409 from a 400).
 */
export async function requestReply<T>(
  endpoint: string,
  query: Record<string, string> = {},
  init: RequestInit = {}
): Promise<IReply<T>> {
  const settings = ServerConnection.makeSettings();
  const search = new URLSearchParams(query).toString();
  const url = URLExt.join(settings.baseUrl, 'mlops', endpoint) + (search ? `?${search}` : '');

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const etag = response.headers.get('ETag');
  if (response.status === 304) {
    return { status: 304, etag };
  }
  const text = await response.text();
  let data: any = text;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    // not JSON (e.g. a proxy's HTML error page): keep the text for the message below
  }
  if (!response.ok) {
    const message = data?.message ?? `${response.status} ${response.statusText}`;
    throw new ServerConnection.ResponseError(response, message);
  }
  return { status: response.status, data: data as T, etag };
}

/** GET/POST a route and return its JSON body. */
export async function requestAPI<T>(
  endpoint: string,
  query: Record<string, string> = {},
  init: RequestInit = {}
): Promise<T> {
  return (await requestReply<T>(endpoint, query, init)).data as T;
}

/** POST a JSON body. */
export function postAPI<T>(endpoint: string, body: unknown): Promise<T> {
  return requestAPI<T>(endpoint, {}, { method: 'POST', body: JSON.stringify(body) });
}

/** The HTTP status of a failed request (0 when the server was not reached). */
export function statusOf(error: unknown): number {
  return error instanceof ServerConnection.ResponseError ? error.response.status : 0;
}
