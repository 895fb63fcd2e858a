import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/**
 * Call a route of the mlops_jupyter server extension. makeRequest adds the token and XSRF headers,
 * so the server's authentication applies. Rejects with the server's `message` on a non-2xx reply.
 */
export async function requestAPI<T>(
  endpoint: string,
  query: Record<string, string> = {},
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const search = new URLSearchParams(query).toString();
  const url = URLExt.join(settings.baseUrl, 'mlops', endpoint) + (search ? `?${search}` : '');

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
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
  return data as T;
}
